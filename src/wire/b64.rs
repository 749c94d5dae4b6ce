//! Base64 checks without decoding (filled in by the twilio-wire work).
