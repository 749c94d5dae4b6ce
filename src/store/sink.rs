//! From [`CallEvent`]s to store ops: the one function a driver calls for every event
//! ([`CallRecorder::on_event`]), whichever driver it is (epoll, io_uring).
//!
//! | event | store |
//! | --- | --- |
//! | `StreamStarted` | resolves the agent by the `agentId` parameter (unknown: the default agent, logged), hands it to the call ([`Call::set_agent`]); record `in-progress` with streamSid, from, to, agent |
//! | `SessionReady` | record `realtimeSessionId` |
//! | `CallerTranscript` / `AssistantTranscript` | item `caller_transcript` / `assistant_transcript` |
//! | `Interrupted` | item `interruption`; record `interruptions` + 1; the assistant item is marked `interrupted` with `heardMs` |
//! | `ToolCall`, `Dtmf` | item `tool_call`, `dtmf` |
//! | `ResponseDone` with usage | record `usage` summed |
//! | `OpenAiError` | item `error` (source `openai`) |
//! | `ProtocolError` | item `error` (source `twilio`/`openai`), the first [`MAX_PROTOCOL_ERROR_ITEMS`] per call (a peer sending garbage 50 times a second must not fill the store; all are counted in metrics) |
//! | `Ended` | record `completed` (Twilio `stop`), `fallback` (AI leg failed: the caller goes to the conference), else `failed`; end reason; `itemsLost` |
//!
//! Nothing here waits: every op is a [`Store::enqueue`]. A dropped op (queue full) is counted
//! here and reported in the record's `itemsLost` when the call ends: the recorder holds a queue
//! slot for that final op from the start ([`Store::reserve_end`]), so it is never the one
//! dropped.

use std::sync::Arc;

use super::model::{CallStatus, ItemKind};
use super::{unix_ms, EndSlot, Op, RecordChange, Store};
use callbridge_core::bridge::{Call, CallEvent, EndReason};

/// Protocol errors stored as items per call; the rest are only counted.
pub const MAX_PROTOCOL_ERROR_ITEMS: u32 = 5;

/// The store side of one call.
pub struct CallRecorder {
    store: Option<Store>,
    call_sid: Arc<str>,
    /// The queue slot of the `Ended` op (given back if the recorder is dropped before it).
    end_slot: Option<EndSlot>,
    /// Ops dropped because the queue was full.
    lost: u64,
    protocol_errors: u32,
}

impl CallRecorder {
    /// The recorder of `call_sid`; with no store, events are not recorded.
    pub fn new(store: Option<&Store>, call_sid: &str) -> CallRecorder {
        CallRecorder {
            store: store.cloned(),
            call_sid: Arc::from(call_sid),
            end_slot: store.map(Store::reserve_end),
            lost: 0,
            protocol_errors: 0,
        }
    }

    /// Whether this recorder hands the call its agent at `start`: the driver then sets
    /// `CallConfig::wait_for_agent`.
    pub fn resolves_agent(&self) -> bool {
        self.store.is_some()
    }

    /// Ops dropped so far because the queue was full.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    fn record(&mut self, change: RecordChange) {
        if let Some(store) = &self.store {
            if !store.record(Arc::clone(&self.call_sid), change) {
                self.lost += 1;
            }
        }
    }

    fn append(&mut self, kind: ItemKind) {
        self.push(Op::Append {
            call_sid: Arc::clone(&self.call_sid),
            at_ms: unix_ms(),
            kind,
        });
    }

    fn push(&mut self, op: Op) {
        if let Some(store) = &self.store {
            if !store.enqueue(op) {
                self.lost += 1;
            }
        }
    }

    /// Records one event of `call` (and, at `StreamStarted`, gives the call its agent).
    pub fn on_event(&mut self, call: &mut Call, ev: &CallEvent) {
        if self.store.is_none() {
            return;
        }
        match ev {
            CallEvent::StreamStarted {
                stream_sid,
                parameters,
                ..
            } => {
                // Cloned (not borrowed: `self.record` needs `&mut self`) here only, not per event.
                let Some(store) = self.store.clone() else {
                    return;
                };
                let param = |name: &str| {
                    parameters
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                };
                let agent = match param("agentId") {
                    Some(id) => store.agent_by_id(id).unwrap_or_else(|| {
                        let d = store.default_agent();
                        tracing::warn!(call_sid = %self.call_sid, agent_id = id, default = %d.id, "unknown agent: using the default agent");
                        d
                    }),
                    None => store.default_agent(),
                };
                self.record(RecordChange::StreamStarted {
                    stream_sid: stream_sid.clone(),
                    from: param("from").unwrap_or("").to_owned(),
                    to: param("to").unwrap_or("").to_owned(),
                    agent_id: agent.id.clone(),
                });
                call.set_agent(agent);
            }
            CallEvent::SessionReady {
                session_id: Some(id),
                ..
            } => self.record(RecordChange::Session {
                session_id: id.clone(),
            }),
            CallEvent::CallerTranscript { item_id, text } => {
                self.append(ItemKind::CallerTranscript {
                    item_id: item_id.clone(),
                    text: text.clone(),
                })
            }
            CallEvent::AssistantTranscript { item_id, text } => {
                self.append(ItemKind::AssistantTranscript {
                    item_id: item_id.clone(),
                    text: text.clone(),
                    interrupted: false,
                    heard_ms: None,
                })
            }
            CallEvent::Interrupted {
                item_id,
                audio_end_ms,
                sent_ms,
                ..
            } => {
                self.append(ItemKind::Interruption {
                    item_id: item_id.clone(),
                    heard_ms: *audio_end_ms,
                    sent_ms: *sent_ms,
                });
                self.record(RecordChange::Interrupted {
                    item_id: item_id.clone(),
                    heard_ms: *audio_end_ms,
                });
            }
            CallEvent::ToolCall {
                call_id,
                name,
                arguments,
            } => self.append(ItemKind::ToolCall {
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            }),
            CallEvent::Dtmf { digit } => self.append(ItemKind::Dtmf {
                digit: digit.clone(),
            }),
            CallEvent::ResponseDone { usage: Some(u), .. } => self.record(RecordChange::Usage {
                input: u.input_tokens,
                output: u.output_tokens,
                total: u.total_tokens,
            }),
            CallEvent::OpenAiError { code, message, .. } => self.append(ItemKind::Error {
                source: "openai".into(),
                code: code.clone(),
                message: message.clone(),
            }),
            CallEvent::ProtocolError(error) => {
                self.protocol_errors += 1;
                if self.protocol_errors <= MAX_PROTOCOL_ERROR_ITEMS {
                    let kind = error.label();
                    self.append(ItemKind::Error {
                        source: error.leg().label().into(),
                        code: Some(kind.to_owned()),
                        message: format!("frame dropped: {kind}"),
                    });
                }
            }
            CallEvent::Ended { reason } => {
                let status = end_status(reason);
                if status != CallStatus::Completed {
                    self.append(ItemKind::Error {
                        source: "callbridge".into(),
                        code: Some(reason.label().to_owned()),
                        message: reason.to_string(),
                    });
                }
                let op = Op::Record {
                    call_sid: Arc::clone(&self.call_sid),
                    at_ms: unix_ms(),
                    change: RecordChange::Ended {
                        status,
                        reason: reason.to_string(),
                        items_lost: self.lost,
                    },
                };
                let sent = match (&self.store, self.end_slot.take()) {
                    (Some(store), Some(slot)) => store.end(slot, op),
                    // A second end (not expected): an ordinary op.
                    (Some(store), None) => store.enqueue(op),
                    (None, _) => true,
                };
                if !sent {
                    self.lost += 1;
                }
            }
            _ => {}
        }
    }
}

/// The final status for an end reason.
pub fn end_status(reason: &EndReason) -> CallStatus {
    match reason {
        EndReason::TwilioStop => CallStatus::Completed,
        // The caller is handed to the fallback, like after an AI failure.
        EndReason::Drained => CallStatus::Fallback,
        r if r.is_ai_failure() => CallStatus::Fallback,
        _ => CallStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::TempDir;
    use crate::store::StoreOptions;
    use callbridge_core::bridge::{CallConfig, ProtocolError, TwilioFault};
    use std::time::{Duration, Instant};

    #[test]
    fn end_reasons_map_to_final_statuses() {
        assert_eq!(end_status(&EndReason::TwilioStop), CallStatus::Completed);
        assert_eq!(
            end_status(&EndReason::OpenAiConnectFailed("x".into())),
            CallStatus::Fallback
        );
        assert_eq!(end_status(&EndReason::TwilioClosed), CallStatus::Failed);
        assert_eq!(end_status(&EndReason::StartTimeout), CallStatus::Failed);
    }

    #[test]
    fn protocol_errors_are_stored_up_to_the_cap_and_the_start_hands_over_the_agent() {
        let dir = TempDir::new("sink");
        let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
        let mut rec = CallRecorder::new(Some(&store), "CA1");
        let mut cfg = CallConfig::new("m", Arc::new(Default::default()), "CA1");
        cfg.wait_for_agent = true;
        let mut call = Call::new(cfg, Instant::now());
        rec.on_event(
            &mut call,
            &CallEvent::StreamStarted {
                stream_sid: "MZ1".into(),
                call_sid: "CA1".into(),
                parameters: vec![("agentId".into(), "nobody".into())],
            },
        );
        assert_eq!(call.agent().id, "default", "unknown agent: the default one");
        for _ in 0..20 {
            rec.on_event(
                &mut call,
                &CallEvent::ProtocolError(ProtocolError::Twilio(TwilioFault::Unparsable(
                    callbridge_core::twilio::events::TwilioParseError::BadBase64,
                ))),
            );
        }
        rec.on_event(
            &mut call,
            &CallEvent::Ended {
                reason: EndReason::TwilioClosed,
            },
        );
        store.flush(Duration::from_secs(10)).unwrap();
        let r = store.get_call("CA1").unwrap();
        assert_eq!(r.status, CallStatus::Failed);
        assert_eq!(r.agent_id.as_deref(), Some("default"));
        let items = store.call_items("CA1").unwrap();
        let protocol = items
            .iter()
            .filter(|i| matches!(&i.kind, ItemKind::Error { source, .. } if source == "twilio"))
            .count();
        assert_eq!(protocol, MAX_PROTOCOL_ERROR_ITEMS as usize);
        assert!(matches!(
            &items.last().unwrap().kind,
            ItemKind::Error { source, .. } if source == "callbridge"
        ));
    }
}
