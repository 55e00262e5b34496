//! Collections: `GET /<Table>/?<query>` streamed from every shard's walk through a merge, and
//! `DELETE /<Table>/?<query>`.

use std::sync::Arc;

use tessera_protocol::MediaType;
use tessera_storage::Table;
use tessera_storage::shard::{WriteKind, WriteOp};

use super::{Rest, send_true};
use crate::app::AppError;
use crate::app::output::{self, Rows};
use crate::app::permissions::TablePermission;
use crate::app::records::readable_only;
use crate::data::query::{self, Merge};
use crate::data::related;
use crate::net::reply::Reply;

/// A collection response switches to chunked streaming once its body outgrows this.
const STREAM_CHUNK: usize = 32 * 1024;

impl Rest {
    /// Parses and plans a collection query, running its conditions through relationships first.
    pub(super) async fn plan(
        &self,
        table: &Arc<Table>,
        prefix: &str,
        query: &str,
    ) -> Result<query::Plan, AppError> {
        let parsed = query::parse(query)?;
        let joins = related::joins(&self.related(), table, parsed.filter.as_ref()).await?;
        query::plan(table, prefix, parsed, joins)
    }

    /// Appends one result row, fetching related records when the selection asks for them.
    pub(super) async fn write_row(
        &self,
        ctx: &related::Ctx<'_>,
        table: &Table,
        plan: &query::Plan,
        body: &[u8],
        out: &mut Rows<'_>,
        buf: &mut Vec<u8>,
    ) -> Result<(), AppError> {
        match (&plan.select, plan.related) {
            (Some(select), true) => {
                let v = related::project(ctx, table, body, select, &plan.narrowing).await?;
                out.row_value(&v, buf);
                Ok(())
            }
            _ => out.row(body, buf),
        }
    }

    /// Answers a collection query, streaming the rows in chunks once they outgrow one buffer.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn get_collection(
        &self,
        table: &Arc<Table>,
        prefix: &str,
        query: &str,
        fmt: MediaType,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        let plan = self.plan(table, prefix, query).await?;
        let visible = |body: &[u8]| -> Result<Option<Vec<u8>>, AppError> {
            restricted
                .map(|p| readable_only(table, p, body))
                .transpose()
        };
        let ctx = self.related();
        let mut rows = Merge::start(&self.router, plan.shard.clone());
        let end = plan.shard.take.unwrap_or(usize::MAX);
        let mut buf = Vec::with_capacity(4096);
        let mut out = Rows::new(table, plan.select.as_ref(), fmt);
        out.begin(&mut buf);
        if plan.shard.keys_only {
            // Short and limited: merge the keys, then read just the records that made it.
            let mut picked = rows.collect(plan.skip, end).await?;
            query::fill_records(&self.router, &mut picked).await?;
            for row in &picked {
                let rec = output::stored_record(&row.stored)?;
                let shown = visible(rec.body)?;
                let body = shown.as_deref().unwrap_or(rec.body);
                self.write_row(&ctx, table, &plan, body, &mut out, &mut buf)
                    .await?;
            }
            out.end(&mut buf);
            reply.send(200, Some(fmt), &[], &buf);
            return Ok(());
        }
        let mut streaming = false;
        let mut seen = 0;
        while seen < end {
            let row = match rows.next().await {
                Ok(Some(row)) => row,
                Ok(None) => break,
                // Once the head is out, an error can only cut the response short.
                Err(_) if streaming => {
                    reply.keep_alive = false;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            seen += 1;
            if seen <= plan.skip {
                continue;
            }
            let rec = output::stored_record(&row.stored)?;
            let shown = visible(rec.body)?;
            let body = shown.as_deref().unwrap_or(rec.body);
            self.write_row(&ctx, table, &plan, body, &mut out, &mut buf)
                .await?;
            if buf.len() >= STREAM_CHUNK {
                if !streaming {
                    reply.start_chunked(fmt);
                    streaming = true;
                }
                reply.chunk(&buf).await?;
                buf.clear();
            }
        }
        out.end(&mut buf);
        if streaming {
            reply.chunk(&buf).await?;
            reply.end();
        } else {
            reply.send(200, Some(fmt), &[], &buf);
        }
        Ok(())
    }

    pub(super) async fn delete_collection(
        &self,
        table: &Arc<Table>,
        prefix: &str,
        query: &str,
        fmt: MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        let plan = self.plan(table, prefix, query).await?;
        let end = plan.shard.take.unwrap_or(usize::MAX);
        let rows = Merge::start(&self.router, plan.shard.clone())
            .collect(plan.skip, end)
            .await?;
        let writes = rows.into_iter().map(|row| {
            self.router.write(WriteOp {
                table: table.clone(),
                key: row.key.to_vec(),
                kind: WriteKind::Delete,
                from: None,
            })
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
        send_true(reply, fmt);
        Ok(())
    }
}
