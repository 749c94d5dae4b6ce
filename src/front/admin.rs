//! The admin API: JSON over the same HTTP front end, under [`PREFIX`], for agents, number
//! routes and call records. Every request needs `Authorization: Bearer $ADMIN_TOKEN`; with no
//! `ADMIN_TOKEN` configured the whole API answers 404 (disabled), a missing or wrong token 401.
//!
//! | route | method | answer |
//! | --- | --- | --- |
//! | `/api/admin/agents` | GET | `{"agents": [Agent…]}` |
//! | `/api/admin/agents/{id}` | GET, PUT, DELETE | the agent; PUT body = an agent (`id` may be omitted): 201 created / 200 replaced; DELETE 204 (409 while a number routes to it) |
//! | `/api/admin/numbers` | GET | `{"numbers": [{"number", "agentId"}…]}` |
//! | `/api/admin/numbers/{number}` | PUT, DELETE | PUT body `{"agentId": "…"}` (`number` E.164 or `default`): 201/200, 422 for an unknown agent; DELETE 204 |
//! | `/api/admin/calls` | GET | `?since=&until=` (unix ms), `&status=`, `&agent=`, `&limit=` (1–1000, default 50), `&cursor=`: `{"calls": […], "nextCursor": …}`, newest first; a filtered page examines at most [`crate::store::MAX_SCAN`] records, so it can be short (even empty) with a `nextCursor`: follow it until it is `null` |
//! | `/api/admin/calls/{callSid}` | GET | the record with `realtimeConversation` |
//! | `/api/admin/calls.jsonl` | GET | export: one call with its conversation per line, same filters; an answer holds at most [`EXPORT_MAX_BYTES`] (and reads at most [`EXPORT_MAX_PAGES`] pages), then ends with an `X-Next-Cursor` header: pass it as `cursor` for the rest |
//!
//! Errors are `{"error": "…"}` with 400 (bad JSON, bad field, bad filter or cursor), 401, 404
//! (unknown id), 405, 409, 422.
//!
//! Agent and number writes are flushed to disk before the answer (they are rare, and a caller
//! who got 200 must find them after a crash). Every admin request runs on tokio's blocking
//! pool, not on the IO thread that serves calls (both drivers, `runtime::connection`):
//! an fsync or a listing never delays a call's audio. Call-path writes never wait for the disk:
//! they go through the store's queue.

use serde_json::json;

use super::routes::Response;
use crate::store::{Agent, CallFilter, CallStatus, Store, StoreError, MAX_PAGE};
use callbridge_core::wire::form::{parse_form, percent_decode};
use callbridge_core::wire::http::Request;

/// Path prefix of the admin API.
pub const PREFIX: &str = "/api/admin/";

/// Calls per page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;

fn json_response(status: u16, body: &serde_json::Value) -> Response {
    let mut bytes = serde_json::to_vec(body).expect("a json value serializes");
    bytes.push(b'\n');
    Response {
        status,
        content_type: "application/json",
        body: bytes,
        headers: vec![],
    }
}

fn error(status: u16, msg: &str) -> Response {
    json_response(status, &json!({ "error": msg }))
}

fn no_content() -> Response {
    Response {
        status: 204,
        content_type: "application/json",
        body: vec![],
        headers: vec![],
    }
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = error(405, "method not allowed");
    r.headers.push(("Allow", allow.to_owned()));
    r
}

/// Byte comparison whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn store_error(e: StoreError) -> Response {
    let status = match &e {
        StoreError::Invalid(_) | StoreError::BadCursor(_) => 400,
        StoreError::UnknownAgent(_) | StoreError::UnknownNumber(_) | StoreError::UnknownCall(_) => {
            404
        }
        StoreError::AgentInUse { .. } => 409,
        _ => 500,
    };
    if status == 500 {
        tracing::error!("admin api: {e}");
    }
    error(status, &e.to_string())
}

/// Answers one admin request (`req.path` starts with [`PREFIX`]).
pub fn route(store: Option<&Store>, token: Option<&str>, req: &Request) -> Response {
    let Some(token) = token else {
        return error(404, "admin API disabled: set ADMIN_TOKEN");
    };
    let presented = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let refused = match presented {
        None => Some("missing bearer token: send Authorization: Bearer $ADMIN_TOKEN"),
        Some(t) if !constant_time_eq(t.as_bytes(), token.as_bytes()) => Some("wrong bearer token"),
        Some(_) => None,
    };
    if let Some(msg) = refused {
        let mut r = error(401, msg);
        r.headers.push(("WWW-Authenticate", "Bearer".to_owned()));
        return r;
    }
    let Some(store) = store else {
        return error(503, "this server has no store");
    };
    let rest = &req.path[PREFIX.len()..];
    let segments: Vec<&str> = rest.split('/').collect();
    let decoded: Result<Vec<String>, _> = segments
        .iter()
        .map(|s| percent_decode(s.as_bytes(), false))
        .collect();
    let Ok(seg) = decoded else {
        return error(400, "bad percent-encoding in the path");
    };
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    match (seg.as_slice(), m) {
        (["agents"], "GET") => match store.list_agents() {
            Ok(a) => json_response(200, &json!({ "agents": a })),
            Err(e) => store_error(e),
        },
        (["agents"], _) => method_not_allowed("GET"),
        (["agents", id], "GET") => match store.get_agent(id) {
            Ok(a) => json_response(200, &serde_json::to_value(a).expect("agent")),
            Err(e) => store_error(e),
        },
        (["agents", id], "PUT") => put_agent(store, id, &req.body),
        (["agents", id], "DELETE") => match store.delete_agent(id) {
            Ok(()) => no_content(),
            Err(e) => store_error(e),
        },
        (["agents", _], _) => method_not_allowed("GET, PUT, DELETE"),
        (["numbers"], "GET") => match store.list_numbers() {
            Ok(n) => {
                let list: Vec<_> = n
                    .into_iter()
                    .map(|(number, agent)| json!({"number": number, "agentId": agent}))
                    .collect();
                json_response(200, &json!({ "numbers": list }))
            }
            Err(e) => store_error(e),
        },
        (["numbers"], _) => method_not_allowed("GET"),
        (["numbers", number], "PUT") => put_number(store, number, &req.body),
        (["numbers", number], "DELETE") => match store.delete_number(number) {
            Ok(()) => no_content(),
            Err(e) => store_error(e),
        },
        (["numbers", _], _) => method_not_allowed("PUT, DELETE"),
        (["calls"], "GET") => list_calls(store, req),
        (["calls.jsonl"], "GET") => export_calls(store, req),
        (["calls"] | ["calls.jsonl"], _) => method_not_allowed("GET"),
        (["calls", sid], "GET") => match store.call_with_conversation(sid) {
            Ok(c) => json_response(200, &serde_json::to_value(c).expect("call")),
            Err(e) => store_error(e),
        },
        (["calls", _], _) => method_not_allowed("GET"),
        _ => error(404, "no such admin route (see README \"Storage\")"),
    }
}

fn parse_json(body: &[u8]) -> Result<serde_json::Value, Response> {
    if body.is_empty() {
        return Err(error(400, "empty body: send a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| error(400, &format!("bad JSON: {e}")))
}

fn put_agent(store: &Store, id: &str, body: &[u8]) -> Response {
    let mut v = match parse_json(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(obj) = v.as_object_mut() else {
        return error(400, "the agent must be a JSON object");
    };
    match obj.get("id") {
        None => {
            obj.insert("id".into(), json!(id));
        }
        Some(serde_json::Value::String(s)) if s == id => {}
        Some(other) => {
            return error(
                400,
                &format!("id {other} in the body does not match {id:?} in the path"),
            )
        }
    }
    let agent: Agent = match serde_json::from_value(v) {
        Ok(a) => a,
        Err(e) => return error(400, &format!("bad agent: {e}")),
    };
    match store.put_agent(&agent) {
        Ok(created) => json_response(
            if created { 201 } else { 200 },
            &serde_json::to_value(agent).expect("agent"),
        ),
        Err(e) => store_error(e),
    }
}

fn put_number(store: &Store, number: &str, body: &[u8]) -> Response {
    let v = match parse_json(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(agent_id) = v.get("agentId").and_then(|a| a.as_str()) else {
        return error(400, "body must be {\"agentId\": \"…\"}");
    };
    match store.put_number(number, agent_id) {
        Ok(created) => json_response(
            if created { 201 } else { 200 },
            &json!({"number": number, "agentId": agent_id}),
        ),
        // The route's target, not the route itself, is unknown: the request is well-formed but
        // cannot be applied.
        Err(StoreError::UnknownAgent(a)) => {
            error(422, &format!("unknown agent {a:?}: create it first"))
        }
        Err(e) => store_error(e),
    }
}

/// The filters, cursor and limit of a calls query.
fn call_query(req: &Request) -> Result<(CallFilter, Option<String>, usize), Response> {
    let params = parse_form(req.query.as_deref().unwrap_or("").as_bytes())
        .map_err(|e| error(400, &format!("bad query: {e}")))?;
    let mut filter = CallFilter::default();
    let mut cursor = None;
    let mut limit = DEFAULT_PAGE;
    for (k, v) in params {
        let ms = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| error(400, &format!("{k}={v:?}: use unix time in milliseconds")))
        };
        match k.as_str() {
            "since" => filter.since_ms = Some(ms(&v)?),
            "until" => filter.until_ms = Some(ms(&v)?),
            "status" => {
                filter.status = Some(CallStatus::parse(&v).ok_or_else(|| {
                    error(
                        400,
                        &format!(
                            "status={v:?}: use ringing, in-progress, completed, failed or fallback"
                        ),
                    )
                })?)
            }
            "agent" => filter.agent_id = Some(v),
            "cursor" => cursor = Some(v),
            "limit" => {
                limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                    _ => return Err(error(400, &format!("limit={v:?}: use 1..={MAX_PAGE}"))),
                }
            }
            other => return Err(error(400, &format!("unknown query parameter {other:?}"))),
        }
    }
    Ok((filter, cursor, limit))
}

fn list_calls(store: &Store, req: &Request) -> Response {
    let (filter, cursor, limit) = match call_query(req) {
        Ok(q) => q,
        Err(r) => return r,
    };
    match store.list_calls(&filter, cursor.as_deref(), limit) {
        Ok(page) => json_response(200, &serde_json::to_value(page).expect("page")),
        Err(e) => store_error(e),
    }
}

/// Most bytes of JSONL one export answer holds: past this the answer ends after the current
/// call, with `X-Next-Cursor` to go on from. Bounds the memory an export takes (it is built in
/// memory) and the time it keeps a blocking thread.
pub const EXPORT_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Most listing pages one export answer reads ([`crate::store::MAX_SCAN`] records examined
/// each), so a filter that matches almost nothing in a huge store still answers promptly.
pub const EXPORT_MAX_PAGES: usize = 20;

/// Header that carries the cursor of the rest of an export cut short by the bounds above.
pub const NEXT_CURSOR_HEADER: &str = "X-Next-Cursor";

fn export_calls(store: &Store, req: &Request) -> Response {
    let (filter, cursor, _) = match call_query(req) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let bounds = ExportBounds {
        page: MAX_PAGE,
        max_bytes: EXPORT_MAX_BYTES,
        max_pages: EXPORT_MAX_PAGES,
    };
    match export_part(store, &filter, cursor, bounds) {
        Ok((body, rest)) => Response {
            status: 200,
            content_type: "application/x-ndjson",
            body,
            headers: rest
                .map(|c| vec![(NEXT_CURSOR_HEADER, c)])
                .unwrap_or_default(),
        },
        Err(e) => store_error(e),
    }
}

/// How much one export answer may hold.
#[derive(Debug, Clone, Copy)]
struct ExportBounds {
    /// Calls listed per store page.
    page: usize,
    /// Bytes after which the answer ends (at a call boundary).
    max_bytes: usize,
    /// Store pages read at most.
    max_pages: usize,
}

/// One part of an export from `cursor`: the JSON lines, and the cursor of the rest when a bound
/// cut it short.
fn export_part(
    store: &Store,
    filter: &CallFilter,
    mut cursor: Option<String>,
    bounds: ExportBounds,
) -> Result<(Vec<u8>, Option<String>), StoreError> {
    let mut body = Vec::new();
    for page_no in 0.. {
        let page = store.list_calls(filter, cursor.as_deref(), bounds.page)?;
        for record in page.calls {
            let items = store.call_items(&record.call_sid)?;
            let line = crate::store::CallWithConversation {
                record,
                realtime_conversation: items,
            };
            serde_json::to_writer(&mut body, &line).expect("a call serializes");
            body.push(b'\n');
            if body.len() >= bounds.max_bytes {
                return Ok((body, Some(crate::store::cursor_after(&line.record))));
            }
        }
        match page.next_cursor {
            Some(c) if page_no + 1 == bounds.max_pages => return Ok((body, Some(c))),
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok((body, None))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::{Op, RecordChange, StoreOptions};

    /// A store in a fresh temporary directory (removed by the caller) with `n` ringing calls,
    /// `CA0…` oldest first.
    fn store_with_calls(tag: &str, n: usize) -> (std::path::PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!(
            "callbridge-admin-{tag}-{}-{}",
            std::process::id(),
            crate::store::unix_ms()
        ));
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        for i in 0..n {
            assert!(store.enqueue(Op::Record {
                call_sid: Arc::from(format!("CA{i:032}")),
                at_ms: 1_000 + i as u64,
                change: RecordChange::Webhook {
                    from: "+819012345678".into(),
                    to: "+81501234567".into(),
                    agent_id: None,
                    fallback: None,
                },
            }));
        }
        store.flush(Duration::from_secs(10)).unwrap();
        (dir, store)
    }

    /// Every part of an export under `bounds`: (call sids per part).
    fn export_all(store: &Store, bounds: ExportBounds) -> Vec<Vec<String>> {
        let mut parts = Vec::new();
        let mut cursor = None;
        loop {
            let (body, rest) = export_part(store, &CallFilter::default(), cursor, bounds).unwrap();
            let sids = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                    v["callSid"].as_str().unwrap().to_owned()
                })
                .collect();
            parts.push(sids);
            match rest {
                Some(c) => cursor = Some(c),
                None => return parts,
            }
        }
    }

    #[test]
    fn an_export_part_ends_at_the_page_bound_and_its_cursor_gives_the_rest_once() {
        let (dir, store) = store_with_calls("pages", 5);
        let by_pages = ExportBounds {
            page: 2,
            max_bytes: usize::MAX,
            max_pages: 2,
        };
        let parts = export_all(&store, by_pages);
        let newest_first: Vec<String> = (0..5).rev().map(|i| format!("CA{i:032}")).collect();
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [4, 1]);
        assert_eq!(parts.concat(), newest_first, "every call once, in order");
        // The byte bound cuts at a call boundary: one call per part here.
        let by_bytes = ExportBounds {
            page: 1000,
            max_bytes: 1,
            max_pages: usize::MAX,
        };
        let parts = export_all(&store, by_bytes);
        // (A cut right after the last call does not know it was the last: an empty part may
        // follow.)
        let calls_per_part: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert!(
            calls_per_part == [1; 5] || calls_per_part == [1, 1, 1, 1, 1, 0],
            "{parts:?}"
        );
        assert_eq!(parts.concat(), newest_first);
        store.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}
