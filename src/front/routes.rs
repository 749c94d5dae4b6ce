//! The routes of callbridge's HTTP front end, sans-IO: a parsed request (and the time) in, a
//! response or a WebSocket upgrade grant out.
//!
//! | route | method | answer |
//! | --- | --- | --- |
//! | `/api/twilio/voice` | POST | TwiML: `<Connect><Stream>` (or the legacy conference) |
//! | `/api/twilio/after-stream[/{callId}]` | POST | TwiML after the stream: `<Hangup/>`, or the conference when the AI leg failed |
//! | `/api/twilio/status` | POST | 204 (status callbacks) |
//! | `/api/twilio/media-stream/{callId}` | GET | WebSocket upgrade for a signed, unexpired `callId`; 403 otherwise |
//! | `/healthz` | GET | 200 with the active call count |
//! | `/api/admin/…` | * | the admin API ([`super::admin`]) |
//! | `/metrics` | GET | Prometheus text format ([`crate::metrics::render`]) |

use crate::front::openai_health::{Admit, OpenAiHealth};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::front::form::parse_form;
use crate::front::http::Request;
use crate::front::ws;
use crate::store::{RecordChange, Store};
use crate::twilio::stream_id::{StreamKey, StreamKeyError};
use crate::twilio::{signature, twiml};

/// Path prefix of the media stream WebSocket.
pub const MEDIA_STREAM_PREFIX: &str = "/api/twilio/media-stream/";

/// Path prefix of `after-stream` with a per-call suffix (`/api/twilio/after-stream/{callId}`,
/// the form of protocol.md 2.1); answered like `/api/twilio/after-stream`.
pub const AFTER_STREAM_PREFIX: &str = "/api/twilio/after-stream/";

/// Calls whose outcome is remembered for `after-stream` (a few minutes of heavy traffic).
const MAX_REMEMBERED_OUTCOMES: usize = 8192;

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// Extra headers (`Allow`, `Sec-WebSocket-Version`, …).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n").into_bytes(),
            headers: vec![],
        }
    }

    fn twiml(doc: String) -> Self {
        Response {
            status: 200,
            content_type: "text/xml; charset=utf-8",
            body: doc.into_bytes(),
            headers: vec![],
        }
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// Permission to upgrade to a media stream, with what the call needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeGrant {
    /// The callSid from the signed `callId`.
    pub call_sid: String,
    /// The `callId` path segment.
    pub call_id: String,
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// Token the `start` message must carry.
    pub start_token: String,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Answer and keep going (or close, per keep-alive).
    Respond(Response),
    /// Answer 101 and hand the connection to a call.
    Upgrade(UpgradeGrant),
}

/// Why a webhook call took the legacy path, for logs and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// `USE_OPENAI_REALTIME=false`.
    RealtimeOff,
    /// `MAX_CALLS` reached.
    Overloaded,
    /// The AI leg failed during the stream.
    AiFailed,
    /// OpenAI looks unreachable (the last connects failed): no stream is opened.
    OpenAiDown,
}

impl FallbackReason {
    /// Its `callbridge_calls_total` outcome label, for the webhook's own fallbacks; `None` for
    /// [`FallbackReason::AiFailed`], counted when the call ended (by its end reason).
    pub fn outcome(self) -> Option<&'static str> {
        match self {
            FallbackReason::RealtimeOff => Some("fallback_realtime_off"),
            FallbackReason::Overloaded => Some("fallback_overloaded"),
            FallbackReason::OpenAiDown => Some("fallback_openai_down"),
            FallbackReason::AiFailed => None,
        }
    }
}

/// The application state shared by the connections of a server.
pub struct App {
    cfg: Arc<Config>,
    stream_key: StreamKey,
    active_calls: AtomicUsize,
    /// Recent calls whose AI leg failed (callSid), for `after-stream`.
    ai_failures: Mutex<VecDeque<String>>,
    /// How the last OpenAI connects went: the webhook skips the AI while it looks down.
    openai_health: Mutex<OpenAiHealth>,
    /// Agents, routes and call records; `None`: nothing is recorded (library use, tests).
    store: Option<Store>,
}

impl App {
    /// The app for `cfg`; fails only if the stream secret is unusable.
    pub fn new(cfg: Arc<Config>) -> Result<Self, StreamKeyError> {
        let stream_key = StreamKey::from_secret(&cfg.stream_secret)?;
        // A probe call shows its outcome within the connect and session-setup timeouts.
        let probe_window = cfg.openai_connect_timeout + cfg.openai_session_timeout;
        Ok(App {
            cfg,
            stream_key,
            active_calls: AtomicUsize::new(0),
            ai_failures: Mutex::new(VecDeque::new()),
            openai_health: Mutex::new(OpenAiHealth::new(probe_window)),
            store: None,
        })
    }

    /// The same app, recording into `store` and picking agents from it.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// The store, if the server has one.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Enqueues a change of `call_sid`'s record (never waits; a full queue drops it, counted).
    fn record(&self, call_sid: &str, change: RecordChange) {
        if let Some(store) = &self.store {
            store.record(Arc::from(call_sid), change);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// Calls currently bridged.
    pub fn active_calls(&self) -> usize {
        self.active_calls.load(Ordering::Relaxed)
    }

    /// Counts a call as active until the guard is dropped.
    pub fn call_started(self: &Arc<Self>) -> ActiveCallGuard {
        self.active_calls.fetch_add(1, Ordering::Relaxed);
        ActiveCallGuard {
            app: Arc::clone(self),
        }
    }

    /// Remembers that `call_sid`'s AI leg failed, so `after-stream` sends the caller to the
    /// conference instead of hanging up.
    pub fn record_ai_failure(&self, call_sid: &str) {
        let mut q = self.ai_failures.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(call_sid.to_owned());
        while q.len() > MAX_REMEMBERED_OUTCOMES {
            q.pop_front();
        }
    }

    /// Notes how a call's AI leg went: `true` once its session is ready, `false` when it failed
    /// to connect or to set up (see [`OpenAiHealth`]).
    pub fn note_openai_outcome(&self, ok: bool) {
        let now = std::time::Instant::now();
        let mut h = self.openai_health.lock().unwrap_or_else(|e| e.into_inner());
        if h.on_outcome(ok, now) {
            tracing::error!(
                failures_in_a_row = h.failures_in_a_row(),
                "OpenAI unreachable: new calls go to the legacy conference for {:?}",
                crate::front::openai_health::OPEN_FOR
            );
        }
    }

    fn openai_down(&self) -> bool {
        let mut h = self.openai_health.lock().unwrap_or_else(|e| e.into_inner());
        h.admit(std::time::Instant::now()) == Admit::Conference
    }

    fn ai_failed(&self, call_sid: &str) -> bool {
        let q = self.ai_failures.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().any(|s| s == call_sid)
    }

    /// Routes one request at `now_unix` (seconds since the epoch, for stream URL expiry).
    pub fn route(&self, req: &Request, now_unix: u64) -> Routed {
        let path = req.path.as_str();
        let resp = match path {
            "/healthz" => self.healthz(req),
            "/metrics" => metrics_page(req),
            "/api/twilio/voice" => self.voice(req, now_unix),
            "/api/twilio/after-stream" => self.after_stream(req),
            // protocol.md 2.1: the <Redirect> target may carry the callId in the path.
            _ if path.starts_with(AFTER_STREAM_PREFIX) => self.after_stream(req),
            "/api/twilio/status" => self.status_callback(req),
            _ if path.starts_with(super::admin::PREFIX) => {
                super::admin::route(self.store.as_ref(), self.cfg.admin_token.as_deref(), req)
            }
            _ if path.starts_with(MEDIA_STREAM_PREFIX) => {
                return self.media_stream(req, &path[MEDIA_STREAM_PREFIX.len()..], now_unix)
            }
            _ => Response::text(404, "not found"),
        };
        Routed::Respond(resp)
    }

    fn healthz(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return method_not_allowed("GET");
        }
        let body = format!(
            "{{\"status\":\"ok\",\"active_calls\":{}}}\n",
            self.active_calls()
        );
        Response {
            status: 200,
            content_type: "application/json",
            body: body.into_bytes(),
            headers: vec![],
        }
    }

    /// The public host for URLs: `PUBLIC_HOST`, else the request's `Host`.
    fn public_host<'a>(&'a self, req: &'a Request) -> Option<&'a str> {
        self.cfg
            .public_host
            .as_deref()
            .or_else(|| req.header("host"))
            .filter(|h| !h.is_empty() && is_host_safe(h))
    }

    /// Parses the form body and checks the Twilio signature; the error is the answer to send.
    fn signed_form(&self, req: &Request) -> Result<Vec<(String, String)>, Response> {
        if req.method != "POST" {
            return Err(method_not_allowed("POST"));
        }
        let params = parse_form(&req.body)
            .map_err(|e| Response::text(400, &format!("bad form body: {e}")))?;
        let Some(token) = &self.cfg.twilio_auth_token else {
            return Ok(params);
        };
        if req.header("x-twilio-webhooks-signature-settings").is_some() {
            tracing::warn!(path = %req.path, "refused: HMAC_SHA256 webhook signatures (X-Twilio-Webhooks-Signature-Settings) are not configured here");
            return Err(Response::text(403, "unsupported signature algorithm"));
        }
        let Some(host) = self.public_host(req) else {
            return Err(Response::text(400, "no host"));
        };
        let url = format!("https://{host}{}", req.raw_target());
        let sig = req.header("x-twilio-signature").unwrap_or("");
        if sig.is_empty() || !signature::validate(token, &url, &params, sig) {
            tracing::warn!(%url, "refused: X-Twilio-Signature missing or wrong");
            return Err(Response::text(403, "invalid signature"));
        }
        Ok(params)
    }

    fn voice(&self, req: &Request, now_unix: u64) -> Response {
        let params = match self.signed_form(req) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(call_sid) = get("CallSid").filter(|s| is_sid_like(s)) else {
            return Response::text(400, "missing or malformed CallSid");
        };
        let from = get("From").unwrap_or("");
        let to = get("To").unwrap_or("");
        // The agent: the route of our number, else the default agent. Our number is `To` on an
        // inbound call and `From` on one we placed (`outbound-api`, `outbound-dial`).
        let ours = our_number(get("Direction"), from, to);
        let agent_id = match &self.store {
            Some(store) => store.agent_for_number(ours).id.clone(),
            None => self.cfg.agent.id.clone(),
        };
        let record = |fallback: Option<&str>| RecordChange::Webhook {
            from: from.to_owned(),
            to: to.to_owned(),
            agent_id: Some(agent_id.clone()),
            fallback: fallback.map(str::to_owned),
        };
        if !self.cfg.use_openai_realtime {
            tracing::info!(call_sid, "realtime mode off: legacy conference");
            self.record(
                call_sid,
                record(Some("USE_OPENAI_REALTIME=false: legacy conference")),
            );
            return self.conference(call_sid, FallbackReason::RealtimeOff);
        }
        if self.openai_down() {
            tracing::warn!(call_sid, "OpenAI unreachable: legacy conference");
            self.record(
                call_sid,
                record(Some(
                    "OpenAI unreachable (its last connects failed): legacy conference",
                )),
            );
            return self.conference(call_sid, FallbackReason::OpenAiDown);
        }
        if self.active_calls() >= self.cfg.max_calls {
            tracing::warn!(
                call_sid,
                max_calls = self.cfg.max_calls,
                "overloaded: legacy conference"
            );
            self.record(
                call_sid,
                record(Some("MAX_CALLS reached: legacy conference")),
            );
            return self.conference(call_sid, FallbackReason::Overloaded);
        }
        let Some(host) = self.public_host(req) else {
            return Response::text(400, "no host");
        };
        let call_id = match self
            .stream_key
            .mint(call_sid, now_unix + self.cfg.stream_ttl.as_secs())
        {
            Ok(id) => id,
            Err(e) => return Response::text(400, &format!("cannot stream this call: {e}")),
        };
        let token = self.stream_key.start_token(&call_id);
        let stream_url = format!("wss://{host}{MEDIA_STREAM_PREFIX}{call_id}");
        let redirect = format!("https://{host}/api/twilio/after-stream");
        self.record(call_sid, record(None));
        let parameters = [
            ("callId", call_id.as_str()),
            ("agentId", agent_id.as_str()),
            ("from", from),
            ("to", to),
            ("token", token.as_str()),
        ];
        tracing::info!(call_sid, from, to, "incoming call: streaming to the agent");
        crate::metrics::webhook_streamed(call_sid, std::time::Instant::now());
        Response::twiml(twiml::connect_stream(&stream_url, &parameters, &redirect))
    }

    fn conference(&self, call_sid: &str, reason: FallbackReason) -> Response {
        let room = self.cfg.conference_name.replace("{CallSid}", call_sid);
        let say = self
            .cfg
            .fallback_say
            .as_ref()
            .map(|(lang, text)| (lang.as_str(), text.as_str()));
        tracing::info!(call_sid, ?reason, %room, "fallback to the legacy conference");
        if let Some(outcome) = reason.outcome() {
            crate::metrics::call_outcome(outcome);
        }
        Response::twiml(twiml::conference(say, &room))
    }

    fn after_stream(&self, req: &Request) -> Response {
        let params = match self.signed_form(req) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let call_sid = params
            .iter()
            .find(|(n, _)| n == "CallSid")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if !call_sid.is_empty() && self.ai_failed(call_sid) {
            self.record(call_sid, RecordChange::FallbackAfterStream);
            return self.conference(call_sid, FallbackReason::AiFailed);
        }
        Response::twiml(twiml::say_hangup(None))
    }

    fn status_callback(&self, req: &Request) -> Response {
        match self.signed_form(req) {
            Ok(params) => {
                record_final_status(self, &params);
                Response {
                    status: 204,
                    content_type: "text/plain",
                    body: vec![],
                    headers: vec![],
                }
            }
            Err(resp) => resp,
        }
    }

    fn media_stream(&self, req: &Request, call_id: &str, now_unix: u64) -> Routed {
        if req.method != "GET" {
            return Routed::Respond(method_not_allowed("GET"));
        }
        let verified = match self.stream_key.verify(call_id, now_unix) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(call_id, "refused media stream: {e}");
                return Routed::Respond(Response::text(403, "unknown or expired stream"));
            }
        };
        if let (Some(token), Some(sig)) = (
            &self.cfg.twilio_auth_token,
            req.header("x-twilio-signature"),
        ) {
            // protocol.md 3.2: signed over the wss:// URL as written in the TwiML; the https://
            // form is accepted too. The stream is closed only if neither this check nor the
            // start token passes: the signed callId already proved our webhook minted this URL,
            // and the token in `start` is always required, so a signature that does not verify
            // (Twilio signing another form of the URL, a proxy rewriting the host) is logged and
            // left to the token instead of taking the call down. A missing header likewise.
            let host = self.public_host(req).unwrap_or("");
            let ok = ["wss", "https"].iter().any(|scheme| {
                let url = format!("{scheme}://{host}{MEDIA_STREAM_PREFIX}{call_id}");
                signature::validate(token, &url, &[], sig)
            });
            if !ok {
                tracing::warn!(
                    call_id,
                    "media stream: x-twilio-signature does not verify; the start token decides"
                );
            }
        }
        match ws::check_upgrade(req) {
            Ok(accept) => Routed::Upgrade(UpgradeGrant {
                call_sid: verified.call_sid,
                call_id: call_id.to_owned(),
                accept,
                start_token: self.stream_key.start_token(call_id),
            }),
            Err(e) => {
                let mut resp = Response::text(e.status(), &e.to_string());
                for (name, value) in e.response_headers() {
                    resp = resp.with_header(name, value);
                }
                Routed::Respond(resp)
            }
        }
    }
}

/// Which side of a call is our Twilio number: `To` for inbound calls (and when `Direction` is
/// absent), `From` for calls we placed (`outbound-api`, `outbound-dial`; protocol.md 1.1).
fn our_number<'a>(direction: Option<&str>, from: &'a str, to: &'a str) -> &'a str {
    match direction {
        Some(d) if d.starts_with("outbound") => from,
        _ => to,
    }
}

/// Keeps a call counted as active while alive.
pub struct ActiveCallGuard {
    app: Arc<App>,
}

impl Drop for ActiveCallGuard {
    fn drop(&mut self) {
        self.app.active_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /metrics`: the Prometheus scrape.
fn metrics_page(req: &Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return method_not_allowed("GET");
    }
    Response {
        status: 200,
        content_type: crate::metrics::CONTENT_TYPE,
        body: crate::metrics::render().into_bytes(),
        headers: vec![],
    }
}

fn method_not_allowed(allow: &str) -> Response {
    Response::text(405, "method not allowed").with_header("Allow", allow)
}

/// Whether a host name is safe to put into URLs we emit (no path, query, space or markup).
fn is_host_safe(host: &str) -> bool {
    host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// Whether a CallSid looks like one (letters and digits, 1–64 characters).
fn is_sid_like(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Final `CallStatus` values of a status callback (protocol.md 1.3).
const FINAL_CALL_STATUSES: &[&str] = &["completed", "busy", "failed", "no-answer", "canceled"];

/// Records a status callback's final `CallStatus`, which closes a record whose stream never
/// started (protocol.md 1.3).
fn record_final_status(app: &App, params: &[(String, String)]) {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let (Some(call_sid), Some(status)) = (get("CallSid"), get("CallStatus")) {
        if is_sid_like(call_sid) && FINAL_CALL_STATUSES.contains(&status) {
            app.record(
                call_sid,
                RecordChange::StatusCallback {
                    call_status: status.to_owned(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::our_number;

    #[test]
    fn our_number_is_to_on_inbound_calls_and_from_on_calls_we_placed() {
        assert_eq!(our_number(Some("inbound"), "+8190", "+8150"), "+8150");
        assert_eq!(our_number(None, "+8190", "+8150"), "+8150");
        assert_eq!(our_number(Some("outbound-api"), "+8150", "+8190"), "+8150");
        assert_eq!(our_number(Some("outbound-dial"), "+8150", "+8190"), "+8150");
    }
}
