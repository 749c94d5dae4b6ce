//! One HTTP connection, for every driver: requests read with limits and timeouts, answered with
//! keep-alive, until a Media Stream upgrade hands the socket to the call loop. Parsing, routing
//! and every answer's content live in `front/`; this module only moves the bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::call_loop::{self, LegIo, LegState, MAX_TWILIO_MESSAGE_BYTES};
use super::transport::{self, room_to_recv, RecvHalf, SendHalf, Transport, READ_CHUNK};
use super::CLOSE_TIMEOUT;
use crate::front::routes::{route_label, App, Response, Routed};
use crate::metrics::{self, Refusal};
use crate::openai::client::Dial;
use callbridge_core::wire::http::{self, Limits, Parsed, Request, RequestParser};
use callbridge_core::wire::ws::{self, Encoder, Role};

/// How long a keep-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One HTTP connection: requests with keep-alive, until an upgrade hands it to a call whose
/// OpenAI leg `dialer` opens.
pub(crate) async fn connection<S: Transport, D: Dial>(
    stream: S,
    peer: SocketAddr,
    app: Arc<App>,
    dialer: D,
) {
    // MAX_CONNECTIONS: past it the connection is closed at once (dropping the stream).
    let Some(_open) = app.open_connection() else {
        metrics::refused(Refusal::MaxConnections);
        tracing::warn!(%peer, max_connections = app.config().max_connections, "connection refused: MAX_CONNECTIONS open");
        return;
    };
    let (mut rd, mut wr) = stream.into_halves();
    let limits = Limits::default();
    let read_timeout = app.config().http_read_timeout;
    let write_timeout = app.config().http_write_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut rd, &mut buf, &limits, read_timeout).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(resp) => {
                tracing::warn!(%peer, status = resp.status, "bad request: {}", String::from_utf8_lossy(&resp.body).trim_end());
                metrics::http_request(route_label(""), resp.status);
                write_response(&mut out, &resp, false);
                let _ = send_within(&mut wr, &mut out, CLOSE_TIMEOUT).await;
                return;
            }
        };
        let keep_alive = request.keep_alive();
        match route(&app, &request).await {
            Routed::Respond(resp) => {
                tracing::debug!(%peer, method = %request.method, path = %request.path, status = resp.status, "http");
                metrics::http_request(route_label(&request.path), resp.status);
                write_response(&mut out, &resp, keep_alive);
                if request.method == "HEAD" {
                    // Headers only (RFC 9110 9.3.2), with the length the body would have.
                    out.truncate(out.len() - resp.body.len());
                }
                let sent = send_within(&mut wr, &mut out, write_timeout).await;
                if sent.is_err() || !keep_alive {
                    return;
                }
            }
            Routed::Upgrade(grant) => {
                metrics::http_request(route_label(&request.path), 101);
                out.clear();
                ws::write_upgrade_response(&mut out, &grant.accept);
                if send_within(&mut wr, &mut out, write_timeout).await.is_err() {
                    return;
                }
                let leftover = std::mem::take(&mut buf);
                // The response buffer is not needed by the call; freed, not kept for its life.
                drop(std::mem::take(&mut out));
                call_loop::run_call(LegIo { rd, wr }, leftover, grant, app, dialer).await;
                return;
            }
            Routed::UpgradeThenClose {
                accept,
                call_sid,
                why,
            } => {
                metrics::http_request(route_label(&request.path), 101);
                out.clear();
                ws::write_upgrade_response(&mut out, &accept);
                Encoder::new(Role::Server).close(&mut out, 1000, why.reason());
                tracing::info!(%call_sid, reason = why.reason(), "media stream accepted and closed at once (1000)");
                if send_within(&mut wr, &mut out, write_timeout).await.is_ok() {
                    // Twilio answers the close and closes; its after-stream reaches the fallback.
                    let mut state = LegState::connected(
                        std::mem::take(&mut buf),
                        Role::Server,
                        MAX_TWILIO_MESSAGE_BYTES,
                        CLOSE_TIMEOUT,
                    );
                    call_loop::finish(&mut LegIo { rd, wr }, &mut state, true).await;
                }
                return;
            }
        }
    }
}

/// Sends all of `out` and flushes (a transport that holds written bytes sends them on flush),
/// within `limit` (`HTTP_WRITE_TIMEOUT_SECS`: a peer that reads nothing cannot hold the
/// connection). The buffer comes back emptied for the next answer.
async fn send_within<W: SendHalf>(
    wr: &mut W,
    out: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<()> {
    let bytes = out.len();
    match tokio::time::timeout(limit, transport::send_all(wr, std::mem::take(out))).await {
        Ok((result, buf)) => {
            *out = buf;
            result
        }
        Err(_) => {
            tracing::warn!(
                bytes,
                "http response not taken within HTTP_WRITE_TIMEOUT_SECS: connection dropped"
            );
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Routes a request. Admin requests (store reads and writes, fsyncs, listings) run on tokio's
/// blocking pool, so they never hold up the IO thread that also moves calls' audio; everything
/// else is answered here, at once.
async fn route(app: &Arc<App>, request: &Request) -> Routed {
    if !request.path.starts_with(crate::front::admin::PREFIX) {
        return app.route(request, unix_now());
    }
    // A copy goes to the blocking thread (admin requests are rare and at most 64 KiB).
    let (app, copy) = (Arc::clone(app), request.clone());
    match tokio::task::spawn_blocking(move || app.route(&copy, unix_now())).await {
        Ok(routed) => routed,
        Err(e) => {
            tracing::error!(path = %request.path, "admin request failed: {e}");
            Routed::Respond(error_response(500, "internal error"))
        }
    }
}

fn write_response(out: &mut Vec<u8>, resp: &Response, keep_alive: bool) {
    out.clear();
    let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http::write_response(
        out,
        resp.status,
        resp.content_type,
        &resp.body,
        keep_alive,
        &headers,
    );
}

/// Reads one complete request. `Ok(None)`: the peer closed or idled out between requests.
/// `Err`: the answer to send before closing (400/408/413/414/431/…).
async fn read_request<R: RecvHalf>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    limits: &Limits,
    read_timeout: Duration,
) -> Result<Option<http::Request>, Response> {
    let mut deadline: Option<tokio::time::Instant> = None;
    // Resumes where the last read's bytes left it: a request dribbled a byte at a time costs
    // its length, not its length squared.
    let mut parser = RequestParser::default();
    loop {
        match parser.parse(buf, limits) {
            Ok(Parsed::Complete { request, consumed }) => {
                buf.drain(..consumed);
                return Ok(Some(request));
            }
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(error_response(e.status(), &e.to_string())),
        }
        // The read timeout runs from the first byte of a request; between requests, the idle one.
        let between_requests = buf.is_empty();
        let limit = if between_requests {
            tokio::time::Instant::now() + IDLE_TIMEOUT
        } else {
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + read_timeout)
        };
        room_to_recv(buf);
        // On a timeout the buffer stays with the receive in flight: the connection closes.
        let received = tokio::time::timeout_at(limit, transport::recv(rd, std::mem::take(buf)));
        match received.await {
            Err(_) if between_requests => return Ok(None),
            Err(_) => return Err(error_response(408, "request not completed in time")),
            Ok((result, back)) => {
                *buf = back;
                match result {
                    Ok(0) => {
                        if !buf.is_empty() {
                            tracing::warn!(
                                bytes = buf.len(),
                                "peer closed in the middle of a request"
                            );
                        }
                        return Ok(None);
                    }
                    Ok(_) => {}
                    Err(_) => return Ok(None),
                }
            }
        }
    }
}

fn error_response(status: u16, msg: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("{msg}\n").into_bytes(),
        headers: vec![],
    }
}
