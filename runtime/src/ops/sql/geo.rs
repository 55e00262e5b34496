//! Harper's geospatial SQL functions on GeoJSON values (objects, or their JSON text):
//! `geoArea` (square metres), `geoLength` and `geoDistance` (kilometres unless a unit is given),
//! `geoNear`, `geoContains`, `geoEqual`, `geoCrosses` (the two intersect), `geoConvert` and
//! `geoDifference`.
//!
//! The measures follow the formulas of turf 6.5, which Harper calls, in the same order of
//! operations, so that the figures agree to the last digit: great-circle distances by haversine
//! on a sphere of radius 6,371,008.8 m, areas by the spherical ring formula on 6,378,137 m.
//! `geoDifference` clips with the `geo` crate's boolean operations, the algorithm turf's
//! `difference` runs, and writes rings as it does: each from its lowest-leftmost vertex, outer
//! rings counter-clockwise, holes clockwise.

use tessera_storage::Value;

/// turf's mean earth radius, in metres (distances).
const EARTH_RADIUS: f64 = 6_371_008.8;
/// turf's equatorial radius, in metres (areas).
const AREA_RADIUS: f64 = 6_378_137.0;

type Point = [f64; 2];

/// A geometry: its type and coordinates, as GeoJSON nests them.
struct Geometry {
    kind: String,
    coordinates: Value,
}

/// A GeoJSON value (or its JSON text) as a list of geometries: a Feature's geometry, each of a
/// FeatureCollection's, a geometry, or a bare position as a point.
fn geometries(v: &Value) -> Vec<Geometry> {
    let parsed;
    let v = match v {
        Value::String(s) => match crate::app::body::json_text(s) {
            Some(x) => {
                parsed = x;
                &parsed
            }
            None => return Vec::new(),
        },
        v => v,
    };
    let text = |k: &str| match v.get(k) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    match (v, text("type")) {
        (Value::Array(_), _) => vec![Geometry {
            kind: "Point".into(),
            coordinates: v.clone(),
        }],
        (_, Some("Feature")) => v.get("geometry").map(geometries).unwrap_or_default(),
        (_, Some("FeatureCollection")) => match v.get("features") {
            Some(Value::Array(fs)) => fs.iter().flat_map(geometries).collect(),
            _ => Vec::new(),
        },
        (_, Some("GeometryCollection")) => match v.get("geometries") {
            Some(Value::Array(gs)) => gs.iter().flat_map(geometries).collect(),
            _ => Vec::new(),
        },
        (_, Some(kind)) => match v.get("coordinates") {
            Some(c) => vec![Geometry {
                kind: kind.to_owned(),
                coordinates: c.clone(),
            }],
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// A position; a null coordinate counts as 0, as JavaScript's arithmetic (turf's) takes it.
fn position(v: &Value) -> Option<Point> {
    let coordinate = |v: &Value| match v {
        Value::Null => Some(0.0),
        v => number(v),
    };
    match v {
        Value::Array(c) if c.len() >= 2 => Some([coordinate(&c[0])?, coordinate(&c[1])?]),
        _ => None,
    }
}

/// A list of positions (a line, a ring).
fn line(v: &Value) -> Vec<Point> {
    match v {
        Value::Array(ps) => ps.iter().filter_map(position).collect(),
        _ => Vec::new(),
    }
}

/// A list of lists of positions (a polygon's rings, a multi-line's lines).
fn lines(v: &Value) -> Vec<Vec<Point>> {
    match v {
        Value::Array(ls) => ls.iter().map(line).collect(),
        _ => Vec::new(),
    }
}

fn polygons(g: &Geometry) -> Vec<Vec<Vec<Point>>> {
    match (g.kind.as_str(), &g.coordinates) {
        ("Polygon", c) => vec![lines(c)],
        ("MultiPolygon", Value::Array(ps)) => ps.iter().map(lines).collect(),
        _ => Vec::new(),
    }
}

/// Every position of a geometry.
fn positions(g: &Geometry) -> Vec<Point> {
    match g.kind.as_str() {
        "Point" => position(&g.coordinates).into_iter().collect(),
        "LineString" | "MultiPoint" => line(&g.coordinates),
        "Polygon" | "MultiLineString" => lines(&g.coordinates).concat(),
        "MultiPolygon" => polygons(g).concat().concat(),
        _ => Vec::new(),
    }
}

/// The segments of a geometry's lines and rings.
fn segments(g: &Geometry) -> Vec<(Point, Point)> {
    let paths = match g.kind.as_str() {
        "LineString" => vec![line(&g.coordinates)],
        "Polygon" | "MultiLineString" => lines(&g.coordinates),
        "MultiPolygon" => polygons(g).concat(),
        _ => Vec::new(),
    };
    paths
        .iter()
        .flat_map(|p| p.windows(2).map(|w| (w[0], w[1])))
        .collect()
}

/// JavaScript's `%` (the sign of the dividend), then degrees to radians as turf converts.
fn radians(degrees: f64) -> f64 {
    (degrees % 360.0) * std::f64::consts::PI / 180.0
}

/// Metres (or radians, degrees) per radian of arc, by turf's unit names.
fn per_radian(units: &str) -> Option<f64> {
    Some(match units {
        "kilometers" | "kilometres" => EARTH_RADIUS / 1000.0,
        "miles" => EARTH_RADIUS / 1609.344,
        "meters" | "metres" => EARTH_RADIUS,
        "feet" => EARTH_RADIUS * 3.28084,
        "inches" => EARTH_RADIUS * 39.370,
        "yards" => EARTH_RADIUS / 1.0936,
        "centimeters" | "centimetres" => EARTH_RADIUS * 100.0,
        "millimeters" | "millimetres" => EARTH_RADIUS * 1000.0,
        "nauticalmiles" => EARTH_RADIUS / 1852.0,
        "radians" => 1.0,
        "degrees" => 360.0 / (2.0 * std::f64::consts::PI),
        _ => return None,
    })
}

/// turf's haversine distance between two positions, in radians. The trigonometry is `libm`'s
/// (FreeBSD's msun, which V8's is too), so that the last digit agrees with Harper's.
fn arc(from: Point, to: Point) -> f64 {
    let d_lat = radians(to[1] - from[1]);
    let d_lon = radians(to[0] - from[0]);
    let (lat1, lat2) = (radians(from[1]), radians(to[1]));
    let a = libm::sin(d_lat / 2.0).powi(2)
        + libm::sin(d_lon / 2.0).powi(2) * libm::cos(lat1) * libm::cos(lat2);
    2.0 * libm::atan2(a.sqrt(), (1.0 - a).sqrt())
}

/// turf's ring area (signed), in square metres.
fn ring_area(ring: &[Point]) -> f64 {
    let n = ring.len();
    if n <= 2 {
        return 0.0;
    }
    let rad = |d: f64| d * std::f64::consts::PI / 180.0;
    let mut total = 0.0;
    for i in 0..n {
        let (lower, middle, upper) = if i == n - 2 {
            (n - 2, n - 1, 0)
        } else if i == n - 1 {
            (n - 1, 0, 1)
        } else {
            (i, i + 1, i + 2)
        };
        total += (rad(ring[upper][0]) - rad(ring[lower][0])) * libm::sin(rad(ring[middle][1]));
    }
    total * AREA_RADIUS * AREA_RADIUS / 2.0
}

fn polygon_area(rings: &[Vec<Point>]) -> f64 {
    let Some((outer, holes)) = rings.split_first() else {
        return 0.0;
    };
    holes
        .iter()
        .fold(ring_area(outer).abs(), |t, h| t - ring_area(h).abs())
}

/// Whether a point is inside a ring (turf's even-odd test; the boundary counts as inside).
fn in_ring(p: Point, ring: &[Point]) -> bool {
    let mut inside = false;
    let n = ring.len();
    if n == 0 {
        return false;
    }
    let mut j = n - 1;
    for i in 0..n {
        let ([xi, yi], [xj, yj]) = (ring[i], ring[j]);
        if on_segment(p, ring[i], ring[j]) {
            return true;
        }
        if ((yi > p[1]) != (yj > p[1])) && (p[0] < (xj - xi) * (p[1] - yi) / (yj - yi) + xi) {
            inside = !inside;
        }
        j = i;
    }
    inside
}

fn in_polygon(p: Point, rings: &[Vec<Point>]) -> bool {
    let Some((outer, holes)) = rings.split_first() else {
        return false;
    };
    in_ring(p, outer) && !holes.iter().any(|h| in_ring(p, h) && !on_ring(p, h))
}

fn on_ring(p: Point, ring: &[Point]) -> bool {
    ring.windows(2).any(|w| on_segment(p, w[0], w[1]))
}

/// Whether a point lies on the segment from `a` to `b`.
fn on_segment(p: Point, [x1, y1]: Point, [x2, y2]: Point) -> bool {
    (p[1] * (x1 - x2) + y1 * (x2 - p[0]) + y2 * (p[0] - x1)) == 0.0
        && (x1 - p[0]) * (x2 - p[0]) <= 0.0
        && (y1 - p[1]) * (y2 - p[1]) <= 0.0
}

/// Whether two segments touch or cross.
fn segments_meet(a: (Point, Point), b: (Point, Point)) -> bool {
    let cross = |o: Point, p: Point, q: Point| {
        (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])
    };
    let within = |o: Point, p: Point, q: Point| {
        q[0] >= o[0].min(p[0])
            && q[0] <= o[0].max(p[0])
            && q[1] >= o[1].min(p[1])
            && q[1] <= o[1].max(p[1])
    };
    let (d1, d2) = (cross(b.0, b.1, a.0), cross(b.0, b.1, a.1));
    let (d3, d4) = (cross(a.0, a.1, b.0), cross(a.0, a.1, b.1));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && within(b.0, b.1, a.0))
        || (d2 == 0.0 && within(b.0, b.1, a.1))
        || (d3 == 0.0 && within(a.0, a.1, b.0))
        || (d4 == 0.0 && within(a.0, a.1, b.1))
}

/// Whether every position of `inner` lies in `outer`'s polygons.
fn contains(outer: &[Geometry], inner: &[Geometry]) -> bool {
    let polys: Vec<Vec<Vec<Point>>> = outer.iter().flat_map(polygons).collect();
    let points: Vec<Point> = inner.iter().flat_map(positions).collect();
    !polys.is_empty()
        && !points.is_empty()
        && points
            .iter()
            .all(|p| polys.iter().any(|poly| in_polygon(*p, poly)))
}

/// Whether two geometries share any point: a segment meets a segment, or a position of one is
/// inside a polygon of the other, or they share a position.
fn intersect(a: &[Geometry], b: &[Geometry]) -> bool {
    let (sa, sb): (Vec<_>, Vec<_>) = (
        a.iter().flat_map(segments).collect(),
        b.iter().flat_map(segments).collect(),
    );
    if sa.iter().any(|x| sb.iter().any(|y| segments_meet(*x, *y))) {
        return true;
    }
    let inside = |x: &[Geometry], y: &[Geometry]| {
        let polys: Vec<_> = x.iter().flat_map(polygons).collect();
        y.iter()
            .flat_map(positions)
            .any(|p| polys.iter().any(|poly| in_polygon(p, poly)))
    };
    let (pa, pb): (Vec<Point>, Vec<Point>) = (
        a.iter().flat_map(positions).collect(),
        b.iter().flat_map(positions).collect(),
    );
    inside(a, b) || inside(b, a) || pa.iter().any(|p| pb.contains(p))
}

/// Whether two geometries are the same type with the same positions (to 6 decimals).
fn equal(a: &[Geometry], b: &[Geometry]) -> bool {
    let round = |ps: Vec<Point>| -> Vec<[i64; 2]> {
        ps.iter()
            .map(|p| [(p[0] * 1e6).round() as i64, (p[1] * 1e6).round() as i64])
            .collect()
    };
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.kind == y.kind && round(positions(x)) == round(positions(y)))
}

fn units(v: Option<&Value>) -> Option<f64> {
    match v {
        None | Some(Value::Null) => per_radian("kilometers"),
        Some(Value::String(u)) => per_radian(u),
        Some(_) => None,
    }
}

fn one_point(v: &Value) -> Option<Point> {
    match geometries(v).as_slice() {
        [g] if g.kind == "Point" => position(&g.coordinates),
        _ => None,
    }
}

/// The geo functions by name (any case), with the arguments each takes.
pub(super) fn named(name: &str) -> Option<(Geo, std::ops::RangeInclusive<usize>)> {
    Some(match name.to_ascii_lowercase().as_str() {
        "geoarea" => (Geo::Area, 1..=1),
        "geolength" => (Geo::Length, 1..=2),
        "geodistance" => (Geo::Distance, 2..=3),
        "geonear" => (Geo::Near, 3..=4),
        "geocontains" => (Geo::Contains, 2..=2),
        "geoequal" => (Geo::Equal, 2..=2),
        "geocrosses" => (Geo::Crosses, 2..=2),
        "geoconvert" => (Geo::Convert, 2..=3),
        "geodifference" => (Geo::Difference, 2..=2),
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Geo {
    Area,
    Length,
    Distance,
    Near,
    Contains,
    Equal,
    Crosses,
    Convert,
    Difference,
}

/// A measure as Harper gives it: NaN when it cannot be taken (a row leaves NaN out, and it
/// sorts first).
fn measure(m: Option<f64>) -> Value {
    Value::Float(m.filter(|m| m.is_finite()).unwrap_or(f64::NAN))
}

/// Calls a geo function.
pub(super) fn call(f: Geo, args: &[Value]) -> Value {
    let arg = |i: usize| args.get(i).unwrap_or(&Value::Null);
    if matches!(arg(0), Value::Null)
        || (f != Geo::Area && f != Geo::Length && matches!(arg(1), Value::Null))
    {
        return match f {
            Geo::Near | Geo::Contains | Geo::Equal | Geo::Crosses => Value::Bool(false),
            _ => Value::Float(f64::NAN),
        };
    }
    match f {
        Geo::Area => {
            let gs = geometries(arg(0));
            measure(
                (!gs.is_empty())
                    .then(|| gs.iter().flat_map(polygons).map(|p| polygon_area(&p)).sum()),
            )
        }
        Geo::Length => {
            let gs = geometries(arg(0));
            measure(units(args.get(1)).filter(|_| !gs.is_empty()).map(|per| {
                gs.iter()
                    .flat_map(segments)
                    .map(|(a, b)| arc(a, b) * per)
                    .sum()
            }))
        }
        Geo::Distance => measure(
            one_point(arg(0))
                .zip(one_point(arg(1)))
                .zip(units(args.get(2)))
                .map(|((a, b), per)| arc(a, b) * per),
        ),
        Geo::Near => {
            let within = match (one_point(arg(0)), one_point(arg(1)), units(args.get(3))) {
                (Some(a), Some(b), Some(per)) => {
                    let d = match arg(2) {
                        Value::String(s) => s.trim().parse().ok(),
                        v => number(v),
                    };
                    d.is_some_and(|d| arc(a, b) * per <= d)
                }
                _ => false,
            };
            Value::Bool(within)
        }
        Geo::Contains => Value::Bool(contains(&geometries(arg(0)), &geometries(arg(1)))),
        Geo::Equal => Value::Bool(equal(&geometries(arg(0)), &geometries(arg(1)))),
        Geo::Crosses => Value::Bool(intersect(&geometries(arg(0)), &geometries(arg(1)))),
        Geo::Difference => difference(arg(0), arg(1)),
        Geo::Convert => {
            let coordinates = parsed(arg(0));
            let kind = match arg(1) {
                Value::String(k) => match k.as_str() {
                    "point" => "Point",
                    "lineString" => "LineString",
                    "multiLineString" => "MultiLineString",
                    "multiPoint" => "MultiPoint",
                    "multiPolygon" => "MultiPolygon",
                    "polygon" => "Polygon",
                    _ => return Value::Null,
                },
                _ => return Value::Null,
            };
            // The properties as given (Harper keeps a JSON text as text).
            let properties = args.get(2).cloned().unwrap_or(Value::Object(Vec::new()));
            feature(properties, kind, coordinates)
        }
    }
}

/// The polygons of a GeoJSON value as the `geo` crate's.
fn multi_polygon(v: &Value) -> geo::MultiPolygon {
    let ring = |points: &Vec<Point>| {
        geo::LineString::from(points.iter().map(|&[x, y]| (x, y)).collect::<Vec<_>>())
    };
    geo::MultiPolygon::new(
        geometries(v)
            .iter()
            .flat_map(polygons)
            .filter_map(|rings| {
                let (outer, holes) = rings.split_first()?;
                Some(geo::Polygon::new(
                    ring(outer),
                    holes.iter().map(ring).collect(),
                ))
            })
            .collect(),
    )
}

/// A ring as GeoJSON positions, from its lowest-leftmost vertex, counter-clockwise or not.
fn ring_value(ring: &geo::LineString, counter_clockwise: bool) -> Value {
    let mut points: Vec<Point> = ring.0.iter().map(|c| [c.x, c.y]).collect();
    if points.len() > 1 && points.first() == points.last() {
        points.pop();
    }
    // Twice the signed area: positive when counter-clockwise.
    let area: f64 = (0..points.len())
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % points.len()]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    if (area > 0.0) != counter_clockwise {
        points.reverse();
    }
    if let Some(start) = (0..points.len()).min_by(|&i, &j| {
        points[i][0]
            .total_cmp(&points[j][0])
            .then(points[i][1].total_cmp(&points[j][1]))
    }) {
        points.rotate_left(start);
    }
    if let Some(&first) = points.first() {
        points.push(first);
    }
    let position = |[x, y]: Point| Value::Array(vec![Value::Float(x), Value::Float(y)]);
    Value::Array(points.into_iter().map(position).collect())
}

/// `geoDifference`: the first polygon (or multi-polygon) less the second, as a Feature with the
/// first's properties; null when nothing is left, no value when either is missing.
fn difference(a: &Value, b: &Value) -> Value {
    use geo::BooleanOps;
    let (first, second) = (multi_polygon(a), multi_polygon(b));
    if first.0.is_empty() || geometries(b).is_empty() {
        return Value::Float(f64::NAN);
    }
    let left = first.difference(&second);
    let polygon = |p: &geo::Polygon| {
        let mut rings = vec![ring_value(p.exterior(), true)];
        rings.extend(p.interiors().iter().map(|h| ring_value(h, false)));
        Value::Array(rings)
    };
    let geometry = match left.0.as_slice() {
        [] => return Value::Null,
        [one] => ("Polygon", polygon(one)),
        many => (
            "MultiPolygon",
            Value::Array(many.iter().map(polygon).collect()),
        ),
    };
    let properties = match parsed(a).get("properties") {
        Some(p @ Value::Object(_)) => p.clone(),
        _ => Value::Object(Vec::new()),
    };
    feature(properties, geometry.0, geometry.1)
}

/// A GeoJSON value given as JSON text, parsed (null when it is not JSON), or as it is.
fn parsed(v: &Value) -> Value {
    match v {
        Value::String(s) => crate::app::body::json_text(s).unwrap_or(Value::Null),
        v => v.clone(),
    }
}

/// A GeoJSON Feature.
fn feature(properties: Value, kind: &str, coordinates: Value) -> Value {
    Value::Object(vec![
        ("type".into(), Value::String("Feature".into())),
        ("properties".into(), properties),
        (
            "geometry".into(),
            Value::Object(vec![
                ("type".into(), Value::String(kind.into())),
                ("coordinates".into(), coordinates),
            ]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    #[test]
    fn measures_agree_with_turf_to_the_last_digit() {
        let square = text(
            r#"{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[0.123456,0],[0.123456,0.123456],[0,0.123456]]]}}"#,
        );
        assert_eq!(call(Geo::Area, &[square]), Value::Float(188871526.05092356));
        let d = call(
            Geo::Distance,
            &[
                text("[-104.979127,39.761563]"),
                text("[-77.035248,38.889475]"),
                text("miles"),
            ],
        );
        assert_eq!(d, Value::Float(1488.6913067538915));
        let line = text(
            r#"{"type": "Feature","geometry": {"type": "LineString","coordinates": [[-104.97963309288025,39.76163265441438],[-104.9823260307312,39.76365323407955],[-104.99193906784058,39.75616442110704]]}}"#,
        );
        assert_eq!(call(Geo::Length, &[line]), Value::Float(1.491544504248235));
        let wellington = text(
            r#"{"type":"LineString","coordinates":[[174.615474867904,-41.34148585702194],[174.8800567396483,-41.31574371071801]]}"#,
        );
        assert_eq!(
            call(Geo::Length, &[wellington, text("miles")]),
            Value::Float(13.842468187961332)
        );
        // A null coordinate is 0, as JavaScript's arithmetic takes it.
        let null_island = text(
            r#"{"type":"LineString","coordinates":[[-112.8291507578281,40.88206673094385],[null,null]]}"#,
        );
        assert_eq!(
            call(Geo::Length, &[null_island, text("miles")]),
            Value::Float(7397.000649273201)
        );
        let denver = text(r#"{"type":"Point","coordinates":[-104.990250,39.739235]}"#);
        assert_eq!(
            call(
                Geo::Distance,
                &[text("[-104.979127,39.761563]"), denver, text("miles")]
            ),
            Value::Float(1.6520011088478226)
        );
    }

    #[test]
    fn relations() {
        let colorado = text(
            r#"{"type":"Polygon","coordinates":[[[-109,37],[-102,37],[-102,41],[-109,41],[-109,37]]]}"#,
        );
        let denver = text("[-104.99,39.74]");
        let boston = text("[-71.05,42.36]");
        assert_eq!(
            call(Geo::Contains, &[colorado.clone(), denver.clone()]),
            Value::Bool(true)
        );
        assert_eq!(
            call(Geo::Contains, &[colorado.clone(), boston.clone()]),
            Value::Bool(false)
        );
        let i25 = text(r#"{"type":"LineString","coordinates":[[-104.9,42],[-104.9,36]]}"#);
        let i90 = text(r#"{"type":"LineString","coordinates":[[-90,44],[-80,44]]}"#);
        assert_eq!(
            call(Geo::Crosses, &[colorado.clone(), i25]),
            Value::Bool(true)
        );
        assert_eq!(
            call(Geo::Crosses, &[colorado.clone(), i90]),
            Value::Bool(false)
        );
        assert_eq!(
            call(Geo::Equal, &[colorado.clone(), colorado.clone()]),
            Value::Bool(true)
        );
        assert_eq!(
            call(
                Geo::Near,
                &[denver.clone(), boston, Value::Int(100), text("miles")]
            ),
            Value::Bool(false)
        );
        assert_eq!(
            call(Geo::Near, &[denver.clone(), denver, Value::Int(1)]),
            Value::Bool(true)
        );
        assert!(matches!(call(Geo::Area, &[Value::Null]), Value::Float(f) if f.is_nan()));
        assert!(
            matches!(call(Geo::Area, &[text("Somewhere in the shire")]), Value::Float(f) if f.is_nan())
        );
        let no_coordinates = text(r#"{"type":"LineString"}"#);
        assert!(matches!(call(Geo::Length, &[no_coordinates]), Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn difference_clips_and_writes_rings_as_turf_does() {
        let square = |x0: f64, y0: f64, side: f64| {
            format!(
                r#"{{"type":"Polygon","coordinates":[[[{x0},{y0}],[{x0},{y1}],[{x1},{y1}],[{x1},{y0}],[{x0},{y0}]]]}}"#,
                x1 = x0 + side,
                y1 = y0 + side
            )
        };
        let json = |v: &Value| v.to_json();
        // A hole, with the field's properties and every vertex exactly as given; the outer ring
        // (given clockwise) comes back counter-clockwise, the hole clockwise, each from its
        // lowest-leftmost vertex.
        let field = format!(
            r#"{{"type":"Feature","properties":{{"name":"field"}},"geometry":{}}}"#,
            square(-3.1, 40.000001, 2.0)
        );
        let pond = square(-2.3, 40.5, 0.25);
        assert_eq!(
            json(&call(Geo::Difference, &[text(&field), text(&pond)])),
            r#"{"type":"Feature","properties":{"name":"field"},"geometry":{"type":"Polygon","coordinates":[[[-3.1,40.000001],[-1.1,40.000001],[-1.1,42.000001],[-3.1,42.000001],[-3.1,40.000001]],[[-2.3,40.5],[-2.3,40.75],[-2.05,40.75],[-2.05,40.5],[-2.3,40.5]]]}}"#
        );
        // Overlapping: the part left, cut where the edges cross.
        assert_eq!(
            json(&call(
                Geo::Difference,
                &[text(&square(0.0, 0.0, 2.0)), text(&square(1.0, 1.0, 2.0))]
            )),
            r#"{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[2,0],[2,1],[1,1],[1,2],[0,2],[0,0]]]}}"#
        );
        // Cut in two: a MultiPolygon.
        let bar = r#"{"type":"Polygon","coordinates":[[[1,-1],[2,-1],[2,3],[1,3],[1,-1]]]}"#;
        let left = call(Geo::Difference, &[text(&square(0.0, 0.0, 3.0)), text(bar)]);
        assert_eq!(
            left.get("geometry").and_then(|g| g.get("type")),
            Some(&text("MultiPolygon"))
        );
        // Nothing left: null; a missing second polygon: no value.
        assert_eq!(
            call(
                Geo::Difference,
                &[text(&square(1.0, 1.0, 1.0)), text(&square(0.0, 0.0, 3.0))]
            ),
            Value::Null
        );
        assert!(matches!(
            call(Geo::Difference, &[text(&square(0.0, 0.0, 1.0)), Value::Null]),
            Value::Float(f) if f.is_nan()
        ));
    }
}
