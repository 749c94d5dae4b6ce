//! Small codecs for untrusted bytes shared by the Twilio and OpenAI layers.
//!
//! - [`b64`]: cheap validity check and decoded length of base64 text, without decoding it.
//! - [`flat_json`]: an allocation-free scanner for the small, flat JSON objects of the audio hot
//!   path; anything it does not fully understand is left to simd-json.
//! - [`json_scratch`]: simd-json's scratch space, one per thread, for every parser.
pub mod b64;
pub mod flat_json;
pub mod json_out;
pub mod json_scratch;
