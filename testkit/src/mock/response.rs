//! Responses of the mock: an assistant audio message streamed as paced deltas, or the scripted
//! function call, and the JSON objects (`realtime.response`, items, usage) they carry.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::audio::{mock_audio, BYTES_PER_MS};
use super::session_config::output_audio;
use super::{ItemKind, MockSession};

/// Output audio per output token, ms: the order of magnitude the real API bills (about 20 audio
/// tokens per second). Only used to make `usage` plausible.
const AUDIO_MS_PER_OUTPUT_TOKEN: u64 = 50;

/// Input audio per input token, ms (about 10 tokens per second; plausibility only).
const AUDIO_MS_PER_INPUT_TOKEN: u64 = 100;

/// Characters per text token (the usual rule of thumb; plausibility only).
const CHARS_PER_TEXT_TOKEN: u64 = 4;

/// Characters of function-call arguments per `response.function_call_arguments.delta`: small,
/// so a client sees several deltas, as from the real server.
const ARGUMENT_DELTA_CHARS: usize = 8;

/// The response being generated: one assistant audio message, streamed delta by delta.
#[derive(Debug)]
pub(super) struct AudioResponse {
    /// `resp_…`.
    pub(super) id: String,
    /// 1-based number of the response in this session (the [`mock_audio`] key).
    pub(super) seq: u32,
    /// The assistant message `item_…`.
    pub(super) item_id: String,
    /// Audio this response will have in total, bytes.
    pub(super) total_bytes: usize,
    /// Audio sent so far, bytes.
    pub(super) sent_bytes: usize,
    /// Deltas sent so far (indexes the size pattern).
    pub(super) deltas_sent: usize,
    /// The full assistant line.
    pub(super) transcript: String,
    /// Byte length of the transcript prefix sent as deltas (always a char boundary).
    pub(super) transcript_sent: usize,
    /// When the next delta is due.
    pub(super) next_at: Instant,
    /// Input tokens billed to this response (`usage`), fixed at its start.
    pub(super) input_tokens: InputTokens,
}

/// Input side of `usage`, estimated when a response starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct InputTokens {
    /// Instructions and text items.
    pub(super) text: u64,
    /// Caller audio so far.
    pub(super) audio: u64,
}

/// The `usage` object of `response.done`.
fn usage(input: InputTokens, output_text_chars: u64, output_audio_ms: u64) -> Value {
    let output_text = output_text_chars.div_ceil(CHARS_PER_TEXT_TOKEN);
    let output_audio = output_audio_ms / AUDIO_MS_PER_OUTPUT_TOKEN;
    let input_total = input.text + input.audio;
    let output_total = output_text + output_audio;
    json!({
        "total_tokens": input_total + output_total,
        "input_tokens": input_total,
        "output_tokens": output_total,
        "input_token_details": {
            "text_tokens": input.text,
            "audio_tokens": input.audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    })
}

/// An assistant message item; `transcript` `None` gives the empty content of `…added`.
fn assistant_item(id: &str, status: &str, transcript: Option<&str>) -> Value {
    let content = match transcript {
        Some(text) => json!([{"type": "output_audio", "transcript": text}]),
        None => json!([]),
    };
    json!({
        "id": id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    })
}

/// A function call item.
fn function_call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    })
}

/// Splits `text` into pieces of at most `chars` characters (never inside a character).
fn chunks_of_chars(text: &str, chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let boundaries = text
        .char_indices()
        .map(|(at, _)| at)
        .skip(chars)
        .step_by(chars.max(1));
    for end in boundaries.chain(std::iter::once(text.len())) {
        if end > start {
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    pieces
}

impl MockSession {
    /// A `realtime.response` object for the response `id`.
    fn response_object(
        &self,
        id: &str,
        status: &str,
        status_details: Value,
        output: Vec<Value>,
        usage: Value,
    ) -> Value {
        json!({
            "id": id,
            "object": "realtime.response",
            "status": status,
            "status_details": status_details,
            "output": output,
            "conversation_id": self.ids.conversation(),
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": output_audio(&self.session)},
            "usage": usage,
            "metadata": null,
        })
    }

    /// Input tokens a response started now is billed.
    fn input_tokens(&self) -> InputTokens {
        let instructions = self
            .session
            .get("instructions")
            .and_then(Value::as_str)
            .map_or(0, |text| text.chars().count() as u64);
        InputTokens {
            text: instructions.div_ceil(CHARS_PER_TEXT_TOKEN) + self.text_input_tokens,
            audio: self.input_bytes / BYTES_PER_MS / AUDIO_MS_PER_INPUT_TOKEN,
        }
    }

    /// Starts a response (VAD turn end or `response.create`): the scripted function call if this
    /// is its turn, else an assistant audio message whose deltas [`Self::run_timers`] sends.
    pub(super) fn start_response(&mut self, now: Instant) {
        self.responses_started += 1;
        self.stats.responses_created += 1;
        let seq = self.responses_started;
        let id = self.ids.next("resp");
        let scripted_call = self
            .config
            .function_call
            .as_ref()
            .filter(|script| script.on_response == seq)
            .cloned();
        if let Some(script) = scripted_call {
            self.function_call_response(now, &id, &script.name, &script.arguments);
            return;
        }
        let item_id = self.ids.next("item");
        let transcript = self.next_assistant_line();
        let created = self.response_object(&id, "in_progress", Value::Null, vec![], Value::Null);
        self.push_event(json!({"type": "response.created", "response": created}));
        let item = assistant_item(&item_id, "in_progress", None);
        self.push_event(json!({
            "type": "response.output_item.added", "response_id": id, "output_index": 0, "item": item,
        }));
        self.add_item(
            &item_id,
            ItemKind::AssistantAudio {
                sent_bytes: 0,
                limit_ms: None,
            },
            item,
        );
        self.push_event(json!({
            "type": "response.content_part.added", "response_id": id, "item_id": item_id,
            "output_index": 0, "content_index": 0, "part": {"type": "audio", "transcript": ""},
        }));
        let first_delay = Duration::from_millis(self.config.first_delta_delay_ms);
        self.active = Some(AudioResponse {
            id,
            seq,
            item_id,
            total_bytes: (self.config.response_audio_ms * BYTES_PER_MS) as usize,
            sent_bytes: 0,
            deltas_sent: 0,
            transcript,
            transcript_sent: 0,
            next_at: now + first_delay,
            input_tokens: self.input_tokens(),
        });
    }

    /// Sends every delta due at `now` and finishes the response once all audio is out.
    pub(super) fn step_response(&mut self, now: Instant) {
        while let Some(mut response) = self.active.take() {
            if response.next_at > now {
                self.active = Some(response);
                return;
            }
            if response.sent_bytes >= response.total_bytes {
                self.finish_response(&response);
                return;
            }
            self.send_delta(now, &mut response);
            self.active = Some(response);
        }
    }

    /// The next `response.output_audio.delta` (its size from the cycling pattern) and the
    /// transcript text that goes with that much audio.
    fn send_delta(&mut self, now: Instant, response: &mut AudioResponse) {
        let pattern = &self.config.delta_sizes_ms;
        let delta_ms = pattern[response.deltas_sent % pattern.len()];
        let remaining = response.total_bytes - response.sent_bytes;
        let len = ((delta_ms * BYTES_PER_MS) as usize).min(remaining);
        let mut audio = mock_audio(response.seq, response.sent_bytes, len);
        if let Some(tap) = &mut self.tap {
            tap.output_audio(now, &mut audio);
        }
        let delta = STANDARD.encode(audio);
        self.push_event(json!({
            "type": "response.output_audio.delta", "response_id": response.id,
            "item_id": response.item_id, "output_index": 0, "content_index": 0, "delta": delta,
        }));
        if self.config.keep_records {
            self.stats
                .record_delta(&response.item_id, &response.id, delta);
        }
        self.assistant_audio_produced = true;
        response.sent_bytes += len;
        response.deltas_sent += 1;
        if let Some(item) = self.items.get_mut(&response.item_id) {
            if let ItemKind::AssistantAudio { sent_bytes, .. } = &mut item.kind {
                *sent_bytes = response.sent_bytes;
            }
        }
        self.send_transcript_delta(response);
        let audio_us = len as f64 * 1000.0 / BYTES_PER_MS as f64;
        response.next_at += Duration::from_micros((audio_us / self.config.speedup) as u64);
    }

    /// The share of the transcript matching the share of audio sent, as one delta.
    fn send_transcript_delta(&mut self, response: &mut AudioResponse) {
        let chars = response.transcript.chars().count();
        let target_chars = (chars * response.sent_bytes)
            .checked_div(response.total_bytes)
            .unwrap_or(chars);
        let end = response
            .transcript
            .char_indices()
            .nth(target_chars)
            .map_or(response.transcript.len(), |(at, _)| at);
        if end <= response.transcript_sent {
            return;
        }
        let delta = response.transcript[response.transcript_sent..end].to_owned();
        response.transcript_sent = end;
        self.push_event(json!({
            "type": "response.output_audio_transcript.delta", "response_id": response.id,
            "item_id": response.item_id, "output_index": 0, "content_index": 0, "delta": delta,
        }));
    }

    /// All audio sent: the `…done` events, ending with `response.done` (completed).
    fn finish_response(&mut self, response: &AudioResponse) {
        let (id, item_id, transcript) = (&response.id, &response.item_id, &response.transcript);
        let ids =
            json!({"response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0});
        let with = |extra: Value| {
            let mut event = ids.clone();
            for (key, value) in extra.as_object().into_iter().flatten() {
                event[key] = value.clone();
            }
            event
        };
        self.push_event(with(json!({"type": "response.output_audio.done"})));
        self.push_event(with(json!({
            "type": "response.output_audio_transcript.done", "transcript": transcript,
        })));
        self.push_event(with(json!({
            "type": "response.content_part.done", "part": {"type": "audio", "transcript": transcript},
        })));
        let item = assistant_item(item_id, "completed", Some(transcript));
        self.push_event(json!({
            "type": "response.output_item.done", "response_id": id, "output_index": 0, "item": item,
        }));
        self.push_event(json!({"type": "conversation.item.done", "item": item}));
        if let Some(stored) = self.items.get_mut(item_id) {
            stored.value = item.clone();
        }
        let audio_ms = response.sent_bytes as u64 / BYTES_PER_MS;
        let usage = usage(
            response.input_tokens,
            transcript.chars().count() as u64,
            audio_ms,
        );
        let done = self.response_object(id, "completed", Value::Null, vec![item], usage);
        self.push_event(json!({"type": "response.done", "response": done}));
        self.stats.responses_completed += 1;
    }

    /// Whether a response is open: an audio one, or a function-call one before its
    /// `response.done` (never both: a response starts only when none is open).
    pub(super) fn responding(&self) -> bool {
        self.active.is_some() || self.tool_response.is_some()
    }

    /// The id of the open response, if any.
    pub(super) fn active_response_id(&self) -> Option<&str> {
        match (&self.active, &self.tool_response) {
            (Some(audio), _) => Some(&audio.id),
            (None, Some(tool)) => Some(&tool.id),
            (None, None) => None,
        }
    }

    /// Cancels the open response (`reason`: `turn_detected` or `client_cancelled`), then
    /// `response.done` with `status: cancelled` (protocol.md 5.5): an audio one sends no more
    /// deltas and its item ends `incomplete` with the transcript sent so far; a function-call one
    /// just ends. Returns whether one was open.
    pub(super) fn cancel_response(&mut self, reason: &str) -> bool {
        let details = json!({"type": "cancelled", "reason": reason});
        if let Some(t) = self.tool_response.take() {
            self.end_tool_response(t, "cancelled", details);
            return true;
        }
        let Some(response) = self.active.take() else {
            return false;
        };
        let heard = &response.transcript[..response.transcript_sent];
        let item = assistant_item(&response.item_id, "incomplete", Some(heard));
        self.push_event(json!({
            "type": "response.output_item.done", "response_id": response.id, "output_index": 0,
            "item": item,
        }));
        if let Some(stored) = self.items.get_mut(&response.item_id) {
            stored.value = item.clone();
        }
        let audio_ms = response.sent_bytes as u64 / BYTES_PER_MS;
        let usage = usage(
            response.input_tokens,
            heard.chars().count() as u64,
            audio_ms,
        );
        let done = self.response_object(&response.id, "cancelled", details, vec![item], usage);
        self.push_event(json!({"type": "response.done", "response": done}));
        self.stats.responses_cancelled += 1;
        true
    }

    /// The scripted function call: everything up to the finished item at once (it carries no
    /// audio to pace); its `response.done` follows [`TOOL_RESPONSE_DONE_AFTER`] later, and until
    /// then the response is active (as with the real server, a `response.create` sent on
    /// `…arguments.done` instead of on `response.done` is refused). Then the mock waits for the
    /// `function_call_output`.
    fn function_call_response(&mut self, now: Instant, id: &str, name: &str, arguments: &str) {
        let item_id = self.ids.next("item");
        let call_id = self.ids.next("call");
        let created = self.response_object(id, "in_progress", Value::Null, vec![], Value::Null);
        self.push_event(json!({"type": "response.created", "response": created}));
        let added = function_call_item(&item_id, &call_id, name, "", "in_progress");
        self.push_event(json!({
            "type": "response.output_item.added", "response_id": id, "output_index": 0, "item": added,
        }));
        let kind = ItemKind::FunctionCall {
            call_id: call_id.clone(),
            answered: false,
        };
        self.add_item(&item_id, kind, added);
        for delta in chunks_of_chars(arguments, ARGUMENT_DELTA_CHARS) {
            self.push_event(json!({
                "type": "response.function_call_arguments.delta", "response_id": id,
                "item_id": item_id, "output_index": 0, "call_id": call_id, "delta": delta,
            }));
        }
        self.push_event(json!({
            "type": "response.function_call_arguments.done", "response_id": id, "item_id": item_id,
            "output_index": 0, "call_id": call_id, "name": name, "arguments": arguments,
        }));
        let item = function_call_item(&item_id, &call_id, name, arguments, "completed");
        self.push_event(json!({
            "type": "response.output_item.done", "response_id": id, "output_index": 0, "item": item,
        }));
        self.push_event(json!({"type": "conversation.item.done", "item": item}));
        if let Some(stored) = self.items.get_mut(&item_id) {
            stored.value = item.clone();
        }
        let usage = usage(self.input_tokens(), arguments.chars().count() as u64, 0);
        self.stats.function_calls.push(call_id);
        self.tool_response = Some(ToolResponse {
            id: id.to_owned(),
            item,
            usage,
            done_at: now + TOOL_RESPONSE_DONE_AFTER,
        });
    }

    /// Sends the open function-call response's `response.done` once it is due.
    pub(super) fn finish_tool_response(&mut self, now: Instant) {
        if let Some(t) = self.tool_response.take_if(|t| t.done_at <= now) {
            self.end_tool_response(t, "completed", Value::Null);
        }
    }

    /// Sends the `response.done` of function-call response `t` with `status` and counts it.
    fn end_tool_response(&mut self, t: ToolResponse, status: &str, details: Value) {
        let done = self.response_object(&t.id, status, details, vec![t.item], t.usage);
        self.push_event(json!({"type": "response.done", "response": done}));
        if status == "completed" {
            self.stats.responses_completed += 1;
        } else {
            self.stats.responses_cancelled += 1;
        }
    }
}

/// How long after its `…arguments.done` a function-call response ends (`response.done`): the
/// real server sends them apart, so a client must wait for `response.done` before asking for the
/// next response. Generous (the real gap is shorter), so that a client asking early is caught
/// even when it is slow to react.
pub(super) const TOOL_RESPONSE_DONE_AFTER: Duration = Duration::from_millis(250);

/// A function-call response whose `response.done` is still to come.
#[derive(Debug)]
pub(super) struct ToolResponse {
    /// The response id.
    pub(super) id: String,
    /// The finished `function_call` item.
    item: Value,
    /// Its usage.
    usage: Value,
    /// When `response.done` goes out.
    pub(super) done_at: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_of_chars_keeps_characters_whole() {
        assert_eq!(chunks_of_chars("{\"a\":1}", 3), vec!["{\"a", "\":1", "}"]);
        assert_eq!(chunks_of_chars("注文番号", 3), vec!["注文番", "号"]);
        assert!(chunks_of_chars("", 3).is_empty());
    }

    #[test]
    fn usage_adds_up() {
        let value = usage(
            InputTokens {
                text: 10,
                audio: 30,
            },
            40,
            3000,
        );
        assert_eq!(value["output_tokens"], 10 + 60);
        assert_eq!(value["input_tokens"], 40);
        assert_eq!(value["total_tokens"], 110);
    }
}
