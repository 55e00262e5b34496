//! The shop's resources, compiled to WebAssembly and served by `tessera run examples/shop`.
//!
//! - `/Product/` extends the `Product` table: `put` validates the record, `get` adds the computed
//!   `priceWithTax`; search, post, patch and delete are the table's own.
//! - `POST /Checkout/` with `{"customer": "ann", "items": [{"product": "p1", "quantity": 2}, ...]}`
//!   takes each product's stock down with `subtractFrom` and writes the order: all in one
//!   transaction, so an item out of stock leaves every product and the order table as they were.

use serde::{Deserialize, Serialize};
use tessera_wasm_sdk::{Context, Data, Error, Resource, Response, Result, Target};

/// The rate `priceWithTax` adds.
const TAX: f64 = 0.2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: String,
    name: String,
    price: f64,
    #[serde(default)]
    stock: i64,
}

/// A product as `GET /Product/id` returns it.
#[derive(Serialize)]
struct PricedProduct {
    #[serde(flatten)]
    product: Product,
    #[serde(rename = "priceWithTax")]
    price_with_tax: f64,
}

/// `/Product/`: the table, with validation and a computed field.
#[derive(Default)]
struct Products;

impl Resource for Products {
    const NAME: &'static str = "Product";
    const EXTENDS: Option<&'static str> = Some("Product");

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let id = target.id()?;
        let product: Product = cx
            .this::<Self>()
            .get(id)?
            .ok_or_else(|| Error::not_found(format!("no product {id}")))?;
        let price_with_tax = (product.price * (1.0 + TAX) * 100.0).round() / 100.0;
        Response::ok(&PricedProduct {
            product,
            price_with_tax,
        })
    }

    fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let product: Product = data.parse()?;
        if product.name.trim().is_empty() {
            return Err(Error::bad_request("a product needs a name"));
        }
        if product.price.is_nan() || product.price < 0.0 {
            return Err(Error::bad_request("price must be a non-negative number"));
        }
        if product.stock < 0 {
            return Err(Error::bad_request("stock must not be negative"));
        }
        cx.this::<Self>().put(target.id()?, &product)?;
        Ok(Response::status(204))
    }
}

#[derive(Deserialize)]
struct Item {
    product: String,
    quantity: i64,
}

#[derive(Deserialize)]
struct CheckoutBody {
    customer: String,
    items: Vec<Item>,
}

#[derive(Serialize)]
struct OrderLine {
    product: String,
    quantity: i64,
    price: f64,
}

#[derive(Serialize)]
struct Order {
    customer: String,
    items: Vec<OrderLine>,
    total: f64,
}

/// `POST /Checkout/`: one order, one transaction.
#[derive(Default)]
struct Checkout;

impl Resource for Checkout {
    const NAME: &'static str = "Checkout";

    fn post(&mut self, cx: &Context, _target: &Target, data: Data) -> Result<Response> {
        let body: CheckoutBody = data.parse()?;
        if body.items.is_empty() {
            return Err(Error::bad_request("an order needs items"));
        }
        let products = cx.table("Product");
        let mut lines = Vec::with_capacity(body.items.len());
        let mut total = 0.0;
        for item in &body.items {
            if item.quantity <= 0 {
                return Err(Error::bad_request("quantities must be positive"));
            }
            products
                .update(item.product.as_str())
                .subtract_from("stock", item.quantity as f64)
                .apply()?;
            // Reads see this request's own writes: the stock after the decrement.
            let p: Product = products
                .get(item.product.as_str())?
                .ok_or_else(|| Error::not_found(format!("no product {}", item.product)))?;
            if p.stock < 0 {
                return Err(Error::new(409, format!("{} is out of stock", p.name)));
            }
            total += p.price * item.quantity as f64;
            lines.push(OrderLine {
                product: p.id,
                quantity: item.quantity,
                price: p.price,
            });
        }
        let order = Order {
            customer: body.customer,
            items: lines,
            total: (total * 100.0).round() / 100.0,
        };
        let id = cx.table("Order").create(&order)?;
        Ok(Response::with_data(201, &id)?.header("Location", &format!("/Order/{id}")))
    }
}

tessera_wasm_sdk::export!(Products, Checkout);
