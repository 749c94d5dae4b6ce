//! Flat JSON scanner for the hot path (filled in by the twilio-wire work).
