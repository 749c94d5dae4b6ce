//! The routes of callbridge's HTTP front end, sans-IO: a parsed request (and the time) in, a
//! response or a WebSocket upgrade grant out.
//!
//! | route | method | answer |
//! | --- | --- | --- |
//! | `/api/twilio/voice` | POST | TwiML: `<Connect><Stream>` (or the legacy conference) |
//! | `/api/twilio/after-stream[/{callId}]` | POST | TwiML after the stream: `<Hangup/>` for a call seen to end normally here, else the conference |
//! | `/api/twilio/status` | POST | 204 (status callbacks) |
//! | `/api/twilio/media-stream/{callId}` | GET | WebSocket upgrade for a signed, unexpired, unused `callId` with a valid upgrade signature (403, 409 otherwise); past `MAX_CALLS` accepted and closed at once |
//! | `/healthz` | GET | 200 with the active call count (liveness) |
//! | `/readyz` | GET | 200 while taking calls; 503 starting, draining or with the store unavailable |
//! | `/api/admin/…` | * | the admin API ([`super::admin`]) |
//! | `/metrics` | GET | Prometheus text format ([`crate::metrics::render`]) |

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::{Config, TwilioAuth};
use crate::front::admission::{Admission, Admit, Reserve};
use crate::metrics::Refusal;
use crate::openai::health::{self, Breaker};
use crate::store::{RecordChange, Store};
use callbridge_core::twilio::party::Masked;
use callbridge_core::twilio::stream_id::{StartTokenCheck, StreamKey, StreamKeyError};
use callbridge_core::twilio::{signature, twiml};
use callbridge_core::wire::form::parse_form;
use callbridge_core::wire::http::Request;
use callbridge_core::wire::ws;

/// Path prefix of the media stream WebSocket.
pub const MEDIA_STREAM_PREFIX: &str = "/api/twilio/media-stream/";

/// Path prefix of `after-stream` with a per-call suffix (`/api/twilio/after-stream/{callId}`,
/// the form of protocol.md 2.1); answered like `/api/twilio/after-stream`.
pub const AFTER_STREAM_PREFIX: &str = "/api/twilio/after-stream/";

/// Calls remembered as having ended normally, for `after-stream` (a few minutes of heavy
/// traffic). One that is forgotten gets the fallback: the safe side.
const MAX_REMEMBERED_ENDS: usize = 8192;

/// How long a normal end is remembered: Twilio fetches `after-stream` within seconds of the
/// stream's close.
const REMEMBER_ENDS_FOR: Duration = Duration::from_secs(600);

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

    /// A refusal: its status and text, counted under `reason`.
    fn refused(reason: Refusal, status: u16, body: &str) -> Self {
        crate::metrics::refused(reason);
        Response::text(status, body)
    }
}

/// Permission to bridge a media stream, with what the call needs. It holds one of the
/// `MAX_CALLS` slots until it is dropped.
#[derive(Debug)]
pub struct UpgradeGrant {
    /// The callSid from the signed `callId`.
    pub call_sid: String,
    /// The `callId` path segment.
    pub call_id: String,
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// What the `start` message's token must be (checked in constant time).
    pub start_token: StartTokenCheck,
    /// The call slot.
    pub slot: CallSlot,
}

/// Why an accepted upgrade is closed at once (1000), sending the caller to the fallback through
/// the TwiML's `<Redirect>`. Twilio resumes the TwiML only when the server closes the socket; what
/// it does after a refused upgrade is not documented, so the upgrade is accepted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAtOnce {
    /// `MAX_CALLS` calls are active on this instance.
    Overloaded,
    /// The instance drains, and the accept window (`DRAIN_ACCEPT_SECS`) has passed.
    Draining,
}

impl CloseAtOnce {
    /// The close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            CloseAtOnce::Overloaded => "over capacity",
            CloseAtOnce::Draining => "shutting down",
        }
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Routed {
    /// Answer and keep going (or close, per keep-alive).
    Respond(Response),
    /// Answer 101 and hand the connection to a call.
    Upgrade(UpgradeGrant),
    /// Answer 101, then close the WebSocket at once with 1000.
    UpgradeThenClose {
        /// `Sec-WebSocket-Accept` value.
        accept: String,
        /// The callSid from the signed `callId`.
        call_sid: String,
        /// Why.
        why: CloseAtOnce,
    },
}

/// Why a webhook call took the legacy path, for logs and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// `USE_OPENAI_REALTIME=false`.
    RealtimeOff,
    /// `MAX_CALLS` reached.
    Overloaded,
    /// The stream did not end normally (the AI leg failed, the stream was closed for the
    /// fallback, or this instance knows nothing of it).
    AfterStream,
    /// OpenAI looks unreachable (the last connects failed): no stream is opened.
    OpenAiDown,
}

impl FallbackReason {
    /// Its `callbridge_calls_total` outcome label, for the webhook's own fallbacks; `None` for
    /// [`FallbackReason::AfterStream`], counted when the call ended (by its end reason).
    pub fn outcome(self) -> Option<&'static str> {
        match self {
            FallbackReason::RealtimeOff => Some("fallback_realtime_off"),
            FallbackReason::Overloaded => Some("fallback_overloaded"),
            FallbackReason::OpenAiDown => Some("fallback_openai_down"),
            FallbackReason::AfterStream => None,
        }
    }
}

/// Calls whose stream ended normally on this instance, for `after-stream` (oldest first).
#[derive(Debug, Default)]
struct NormalEnds {
    order: VecDeque<(Instant, String)>,
    sids: HashSet<String>,
}

impl NormalEnds {
    fn remember(&mut self, now: Instant, call_sid: &str) {
        self.forget_old(now);
        if self.sids.insert(call_sid.to_owned()) {
            self.order.push_back((now, call_sid.to_owned()));
        }
        while self.order.len() > MAX_REMEMBERED_ENDS {
            self.forget_oldest();
        }
    }

    fn contains(&mut self, now: Instant, call_sid: &str) -> bool {
        self.forget_old(now);
        self.sids.contains(call_sid)
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= REMEMBER_ENDS_FOR)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, sid)) = self.order.pop_front() {
            self.sids.remove(&sid);
        }
    }
}

/// Where the instance is in its life (design.md "Life of an instance"), for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Started, but not yet serving (its driver is coming up).
    Starting,
    /// Takes calls.
    Ready,
    /// SIGTERM came: no new calls should come here; calls in flight run on.
    Draining,
}

/// What a drain needs to know, shared by the connections.
#[derive(Debug)]
struct Lifecycle {
    readiness: Readiness,
    /// During a drain: upgrades are still bridged until then.
    accept_until: Option<Instant>,
    /// Calls this instance closed during the drain whose after-stream has not come yet: the
    /// listener stays open for them (within `DRAIN_HTTP_GRACE_SECS`).
    awaiting_after_stream: HashSet<String>,
}

/// The drain's "end every call now": a flag each call loop checks once per turn (one relaxed
/// load, no lock on the audio path), and a waker per call, registered once, so that a call with
/// nothing to read is woken too.
#[derive(Debug, Default)]
pub struct EndCalls {
    now: std::sync::atomic::AtomicBool,
    wakers: Mutex<std::collections::HashMap<u64, Arc<futures_util::task::AtomicWaker>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl EndCalls {
    /// Registers a call: the future resolves once calls must end.
    pub fn watch(self: &Arc<Self>) -> EndCallsWatch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(futures_util::task::AtomicWaker::new());
        lock(&self.wakers).insert(id, Arc::clone(&waker));
        EndCallsWatch {
            calls: Arc::clone(self),
            id,
            waker,
        }
    }

    fn end_all(&self) {
        self.now.store(true, Ordering::SeqCst);
        for w in lock(&self.wakers).values() {
            w.wake();
        }
    }
}

/// One call's watch on [`EndCalls`]: a future that resolves when the call must end.
#[derive(Debug)]
pub struct EndCallsWatch {
    calls: Arc<EndCalls>,
    id: u64,
    waker: Arc<futures_util::task::AtomicWaker>,
}

impl std::future::Future for EndCallsWatch {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        // Register first, then look: an `end_all` in between still wakes this task.
        self.waker.register(cx.waker());
        if self.calls.now.load(Ordering::SeqCst) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

impl Drop for EndCallsWatch {
    fn drop(&mut self) {
        lock(&self.calls.wakers).remove(&self.id);
    }
}

/// A slot of `MAX_CALLS`, held by a bridged call; freed when dropped.
#[derive(Debug)]
pub struct CallSlot {
    admission: Arc<Mutex<Admission>>,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        lock(&self.admission).release();
    }
}

/// An open HTTP connection, counted against `MAX_CONNECTIONS` until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The application state shared by the connections of a server.
pub struct App {
    cfg: Arc<Config>,
    stream_key: Arc<StreamKey>,
    /// Call slots and used stream ids.
    admission: Arc<Mutex<Admission>>,
    /// Open HTTP connections.
    connections: Arc<AtomicUsize>,
    /// Calls whose stream ended normally here: their `after-stream` hangs up.
    normal_ends: Mutex<NormalEnds>,
    /// Whether OpenAI looks reachable: the webhook skips the AI while it does not.
    breaker: Breaker,
    /// Starting, ready or draining.
    lifecycle: Mutex<Lifecycle>,
    /// Set at the drain's deadline: every call still up ends (`EndReason::Drained`).
    end_calls: Arc<EndCalls>,
    /// Agents, routes and call records; `None`: nothing is recorded (library use, tests).
    store: Option<Store>,
}

impl App {
    /// The app for `cfg`; fails only if the stream secret is unusable.
    pub fn new(cfg: Arc<Config>) -> Result<Self, StreamKeyError> {
        let stream_key = Arc::new(StreamKey::from_secret(&cfg.stream_secret)?);
        // A probe call shows its outcome within the connect and session-setup timeouts.
        let probe_window = cfg.openai_connect_timeout + cfg.openai_session_timeout;
        Ok(App {
            admission: Arc::new(Mutex::new(Admission::new(
                cfg.max_calls,
                cfg.stream_reserve,
            ))),
            cfg,
            stream_key,
            connections: Arc::new(AtomicUsize::new(0)),
            normal_ends: Mutex::new(NormalEnds::default()),
            breaker: Breaker::new(probe_window),
            lifecycle: Mutex::new(Lifecycle {
                readiness: Readiness::Starting,
                accept_until: None,
                awaiting_after_stream: HashSet::new(),
            }),
            end_calls: Arc::default(),
            store: None,
        })
    }

    /// Where the instance is in its life.
    pub fn readiness(&self) -> Readiness {
        lock(&self.lifecycle).readiness
    }

    /// The driver is serving: `/readyz` answers 200.
    pub fn mark_ready(&self) {
        let mut l = lock(&self.lifecycle);
        if l.readiness == Readiness::Starting {
            l.readiness = Readiness::Ready;
        }
    }

    /// SIGTERM: `/readyz` answers 503 from now on, and upgrades are bridged for `accept` more
    /// (`DRAIN_ACCEPT_SECS`); returns when that window ends.
    pub fn begin_drain(&self, now: Instant, accept: Duration) -> Instant {
        let until = {
            let mut l = lock(&self.lifecycle);
            if l.readiness != Readiness::Draining {
                l.readiness = Readiness::Draining;
                l.accept_until = Some(now + accept);
            }
            l.accept_until.unwrap_or(now)
        };
        crate::metrics::set_drain(true, self.active_calls());
        until
    }

    /// The drain is closing: from now on every upgrade is accepted and closed at once, whatever
    /// the accept window said, so no call can start after the drain stopped waiting for calls.
    pub fn stop_bridging(&self) {
        let mut l = lock(&self.lifecycle);
        let now = Instant::now();
        if l.accept_until.is_none_or(|until| until > now) {
            l.accept_until = Some(now);
        }
    }

    /// The drain's deadline has come: every call still up is ended (`drained`), its stream
    /// closed normally so the caller reaches the fallback.
    pub fn end_calls(&self) {
        self.end_calls.end_all();
    }

    /// What a call watches to learn that it must end ([`App::end_calls`]).
    pub fn end_calls_watch(&self) -> EndCallsWatch {
        self.end_calls.watch()
    }

    /// Calls closed during the drain whose after-stream has not reached this instance yet.
    pub fn awaiting_after_streams(&self) -> usize {
        lock(&self.lifecycle).awaiting_after_stream.len()
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

    /// The OpenAI circuit breaker (the pools feed it too).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Calls currently bridged.
    pub fn active_calls(&self) -> usize {
        lock(&self.admission).active()
    }

    /// Counts a new HTTP connection against `MAX_CONNECTIONS`; `None` when it is over (the
    /// connection is to be closed at once).
    pub fn open_connection(&self) -> Option<ConnectionSlot> {
        let max = self.cfg.max_connections;
        self.connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionSlot {
            open: Arc::clone(&self.connections),
        })
    }

    /// HTTP connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Notes how a bridged call ended: a normal end makes its `after-stream` hang up; anything
    /// else (or nothing known) sends the caller to the fallback.
    pub fn call_ended(&self, call_sid: &str, normal: bool) {
        if normal {
            lock(&self.normal_ends).remember(Instant::now(), call_sid);
            return;
        }
        // We closed the stream: Twilio follows the <Redirect>, and a draining instance keeps its
        // listener open for that request.
        let mut l = lock(&self.lifecycle);
        if l.readiness == Readiness::Draining {
            l.awaiting_after_stream.insert(call_sid.to_owned());
        }
    }

    fn ended_normally(&self, call_sid: &str) -> bool {
        lock(&self.normal_ends).contains(Instant::now(), call_sid)
    }

    /// Routes one request at `now_unix` (seconds since the epoch, for stream URL expiry).
    pub fn route(&self, req: &Request, now_unix: u64) -> Routed {
        let path = req.path.as_str();
        let resp = match path {
            "/healthz" => self.healthz(req),
            "/readyz" => self.readyz(req),
            "/metrics" => self.metrics_page(req),
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

    /// `/readyz`: 200 while the instance takes calls; 503 while it starts, drains, or its store
    /// takes no writes, the body saying which. `/healthz` stays liveness only.
    fn readyz(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return method_not_allowed("GET");
        }
        let store_ok = self.store.as_ref().is_none_or(Store::is_available);
        match (self.readiness(), store_ok) {
            (Readiness::Draining, _) => Response::text(503, "draining"),
            (Readiness::Starting, _) => Response::text(503, "starting"),
            (Readiness::Ready, false) => Response::text(503, "store unavailable"),
            (Readiness::Ready, true) => Response::text(200, "ready"),
        }
    }

    /// The public host for URLs: `PUBLIC_HOST`; unsigned, the request's `Host` may stand in.
    /// With signatures on, `PUBLIC_HOST` is always set (the configuration requires it) and the
    /// `Host` header is never used.
    fn public_host<'a>(&'a self, req: &'a Request) -> Option<&'a str> {
        match &self.cfg.twilio {
            TwilioAuth::Signed { public_host, .. } => Some(public_host.as_str()),
            TwilioAuth::Unsigned { public_host } => public_host
                .as_deref()
                .or_else(|| req.header("host"))
                .filter(|h| !h.is_empty() && is_host_safe(h)),
        }
    }

    /// Parses the form body and checks the Twilio signature; the error is the answer to send.
    fn signed_form(&self, req: &Request) -> Result<Vec<(String, String)>, Response> {
        if req.method != "POST" {
            return Err(method_not_allowed("POST"));
        }
        let params = parse_form(&req.body)
            .map_err(|e| Response::text(400, &format!("bad form body: {e}")))?;
        let TwilioAuth::Signed {
            tokens,
            public_host,
            ..
        } = &self.cfg.twilio
        else {
            return Ok(params);
        };
        if req.header("x-twilio-webhooks-signature-settings").is_some() {
            tracing::warn!(path = %req.path, "refused: HMAC_SHA256 webhook signatures (X-Twilio-Webhooks-Signature-Settings) are not configured here");
            return Err(Response::refused(
                Refusal::WebhookSignature,
                403,
                "unsupported signature algorithm",
            ));
        }
        let url = format!("https://{public_host}{}", req.raw_target());
        let sig = req.header("x-twilio-signature").unwrap_or("");
        if !signed_by_any(tokens, &url, &params, sig) {
            tracing::warn!(%url, "refused: X-Twilio-Signature missing or wrong");
            return Err(Response::refused(
                Refusal::WebhookSignature,
                403,
                "invalid signature",
            ));
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
        let (from_shown, to_shown) = (Masked(from), Masked(to));
        if !self.cfg.use_openai_realtime {
            tracing::info!(call_sid, "realtime mode off: legacy conference");
            self.record(
                call_sid,
                record(Some("USE_OPENAI_REALTIME=false: legacy conference")),
            );
            return self.conference(call_sid, FallbackReason::RealtimeOff);
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
        if lock(&self.admission).reserve(Instant::now(), &call_id) == Reserve::Full {
            tracing::warn!(
                call_sid,
                max_calls = self.cfg.max_calls,
                "overloaded (active calls and streams just minted fill MAX_CALLS): legacy conference"
            );
            self.record(
                call_sid,
                record(Some("MAX_CALLS reached: legacy conference")),
            );
            return self.conference(call_sid, FallbackReason::Overloaded);
        }
        if self.breaker.admit() == health::Admit::Conference {
            lock(&self.admission).unreserve(&call_id);
            tracing::warn!(call_sid, "OpenAI unreachable: legacy conference");
            self.record(
                call_sid,
                record(Some(
                    "OpenAI unreachable (its last connects failed): legacy conference",
                )),
            );
            return self.conference(call_sid, FallbackReason::OpenAiDown);
        }
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
        tracing::info!(call_sid, from = %from_shown, to = %to_shown, "incoming call: streaming to the agent");
        crate::metrics::webhook_streamed(call_sid, Instant::now());
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

    /// What Twilio does after the stream. Twilio fetches it only when we closed the stream, never
    /// after the caller hung up, so `<Hangup/>` is answered only for a call this instance knows
    /// ended normally; any other call (its AI leg failed, it was closed for the fallback, or it
    /// was served by another instance) goes to the conference: never silence, and no decision
    /// depends on which instance the request reaches.
    fn after_stream(&self, req: &Request) -> Response {
        let params = match self.signed_form(req) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let call_sid = params
            .iter()
            .find(|(n, _)| n == "CallSid")
            .map(|(_, v)| v.as_str())
            .filter(|s| is_sid_like(s));
        let Some(call_sid) = call_sid else {
            return Response::text(400, "missing or malformed CallSid");
        };
        lock(&self.lifecycle).awaiting_after_stream.remove(call_sid);
        if self.ended_normally(call_sid) {
            return Response::twiml(twiml::say_hangup(None));
        }
        self.record(call_sid, RecordChange::FallbackAfterStream);
        self.conference(call_sid, FallbackReason::AfterStream)
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

    /// The media stream's WebSocket upgrade, checked in this order: the signed stream id (403),
    /// the upgrade's own signature (403, when enforced), the WebSocket handshake, single use
    /// (409), then a call slot (none: accepted and closed at once).
    fn media_stream(&self, req: &Request, call_id: &str, now_unix: u64) -> Routed {
        if req.method != "GET" {
            return Routed::Respond(method_not_allowed("GET"));
        }
        let verified = match self.stream_key.verify(call_id, now_unix) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(call_id, "refused media stream: {e}");
                return Routed::Respond(Response::refused(
                    Refusal::StreamId,
                    403,
                    "unknown or expired stream",
                ));
            }
        };
        if let TwilioAuth::Signed {
            tokens,
            public_host,
            verify_upgrade,
        } = &self.cfg.twilio
        {
            // protocol.md 3.2: signed over the wss:// URL as written in the TwiML (with or
            // without :443); the https:// form is accepted too, should Twilio ever sign that.
            let sig = req.header("x-twilio-signature").unwrap_or("");
            let ok = ["wss", "https"].iter().any(|scheme| {
                let url = format!("{scheme}://{public_host}{MEDIA_STREAM_PREFIX}{call_id}");
                signed_by_any(tokens, &url, &[], sig)
            });
            match (ok, verify_upgrade) {
                (true, _) => {}
                (false, true) => {
                    tracing::warn!(
                        call_sid = %verified.call_sid,
                        "refused media stream: x-twilio-signature missing or wrong"
                    );
                    return Routed::Respond(Response::refused(
                        Refusal::UpgradeSignature,
                        403,
                        "invalid signature",
                    ));
                }
                (false, false) => tracing::warn!(
                    call_sid = %verified.call_sid,
                    "media stream: x-twilio-signature does not verify (TWILIO_VERIFY_UPGRADE=false: the start token decides)"
                ),
            }
        }
        let accept = match ws::check_upgrade(req) {
            Ok(accept) => accept,
            Err(e) => {
                let mut resp = Response::text(e.status(), &e.to_string());
                for (name, value) in e.response_headers() {
                    resp = resp.with_header(name, value);
                }
                return Routed::Respond(resp);
            }
        };
        // Draining past the accept window: no call is bridged any more (the id is used all the
        // same, so single use still holds).
        let bridging = lock(&self.lifecycle)
            .accept_until
            .is_none_or(|until| Instant::now() < until);
        let admit = lock(&self.admission).admit(
            Instant::now(),
            now_unix,
            call_id,
            verified.expires_at_unix,
            bridging,
        );
        let why = match admit {
            Admit::Bridge => {
                return Routed::Upgrade(UpgradeGrant {
                    call_sid: verified.call_sid,
                    call_id: call_id.to_owned(),
                    accept,
                    start_token: StartTokenCheck::new(Arc::clone(&self.stream_key), call_id),
                    slot: CallSlot {
                        admission: Arc::clone(&self.admission),
                    },
                })
            }
            Admit::Reused => {
                tracing::warn!(call_sid = %verified.call_sid, "refused media stream: its stream id already opened a stream");
                return Routed::Respond(Response::refused(
                    Refusal::StreamReused,
                    409,
                    "stream already opened",
                ));
            }
            Admit::TooManyStreams => {
                tracing::error!(call_sid = %verified.call_sid, "refused media stream: too many unexpired stream ids remembered");
                return Routed::Respond(Response::refused(
                    Refusal::TooManyStreams,
                    503,
                    "too many streams",
                ));
            }
            Admit::Full => {
                tracing::warn!(
                    call_sid = %verified.call_sid,
                    max_calls = self.cfg.max_calls,
                    "media stream over MAX_CALLS: accepted and closed, after-stream sends the caller to the conference"
                );
                crate::metrics::refused(Refusal::MaxCalls);
                crate::metrics::call_outcome("fallback_overloaded");
                CloseAtOnce::Overloaded
            }
            Admit::NotBridging => {
                tracing::warn!(
                    call_sid = %verified.call_sid,
                    "media stream after the drain's accept window: accepted and closed, after-stream sends the caller to the conference"
                );
                crate::metrics::refused(Refusal::Draining);
                crate::metrics::call_outcome("fallback_draining");
                CloseAtOnce::Draining
            }
        };
        // Accepted and closed at once: Twilio follows the <Redirect>, and a draining instance
        // keeps its listener open for that after-stream.
        self.call_ended(&verified.call_sid, false);
        Routed::UpgradeThenClose {
            accept,
            call_sid: verified.call_sid,
            why,
        }
    }
}

/// Whether `sig` is Twilio's signature of `url` and `params` under any of `tokens` (each one is
/// checked, so the time taken does not say which matched).
fn signed_by_any(tokens: &[String], url: &str, params: &[(String, String)], sig: &str) -> bool {
    !sig.is_empty()
        && tokens
            .iter()
            .fold(false, |ok, t| signature::validate(t, url, params, sig) | ok)
}

/// Which side of a call is our Twilio number: `To` for inbound calls (and when `Direction` is
/// absent), `From` for calls we placed (`outbound-api`, `outbound-dial`; protocol.md 1.1).
fn our_number<'a>(direction: Option<&str>, from: &'a str, to: &'a str) -> &'a str {
    match direction {
        Some(d) if d.starts_with("outbound") => from,
        _ => to,
    }
}

impl App {
    /// `GET /metrics`: the Prometheus scrape (gauges of this app's state set first).
    fn metrics_page(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return method_not_allowed("GET");
        }
        crate::metrics::set_http_connections(self.open_connections());
        metrics_response()
    }
}

fn metrics_response() -> Response {
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

/// The `route` label of a path: one value per route of the front end, so the label set is
/// bounded whatever paths clients try.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/api/twilio/voice" => "voice",
        "/api/twilio/after-stream" => "after_stream",
        "/api/twilio/status" => "status",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ if path.starts_with(AFTER_STREAM_PREFIX) => "after_stream",
        "" => "unparsed",
        _ if path.starts_with(MEDIA_STREAM_PREFIX) => "media_stream",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::{our_number, route_label, FallbackReason};

    #[test]
    fn our_number_is_to_on_inbound_calls_and_from_on_calls_we_placed() {
        assert_eq!(our_number(Some("inbound"), "+8190", "+8150"), "+8150");
        assert_eq!(our_number(None, "+8190", "+8150"), "+8150");
        assert_eq!(our_number(Some("outbound-api"), "+8150", "+8190"), "+8150");
        assert_eq!(our_number(Some("outbound-dial"), "+8150", "+8190"), "+8150");
    }

    #[test]
    fn routes_map_to_a_bounded_label_set() {
        assert_eq!(route_label("/api/twilio/voice"), "voice");
        assert_eq!(
            route_label("/api/twilio/media-stream/CAxyz.123.abc"),
            "media_stream"
        );
        assert_eq!(route_label("/wp-admin/setup.php"), "other");
        assert_eq!(route_label("/metrics"), "metrics");
        assert_eq!(route_label(""), "unparsed");
    }

    #[test]
    fn every_fallback_outcome_is_a_known_outcome_label() {
        for reason in [
            FallbackReason::RealtimeOff,
            FallbackReason::Overloaded,
            FallbackReason::OpenAiDown,
            FallbackReason::AfterStream,
        ] {
            // A new reason must be added here (the match stops compiling without it).
            match reason {
                FallbackReason::RealtimeOff
                | FallbackReason::Overloaded
                | FallbackReason::OpenAiDown
                | FallbackReason::AfterStream => {}
            }
            if let Some(label) = reason.outcome() {
                assert!(
                    crate::metrics::OUTCOMES.contains(&label),
                    "{label} is not in crate::metrics::OUTCOMES"
                );
            }
        }
    }
}
