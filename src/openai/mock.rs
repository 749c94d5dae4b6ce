//! The scripted mock OpenAI Realtime server (in progress).
