//! The TwiML documents callbridge answers to Twilio's webhooks (protocol.md section 2).
//!
//! A document Twilio cannot parse makes it play its generic application-error message, so the
//! caller never reaches the agent (protocol.md 1.2). The builders are therefore infallible: every
//! value is passed through [`escape_xml`], which cannot produce text that breaks the document.
//!
//! The documents are written without indentation; whitespace between TwiML elements carries no
//! meaning.

/// The XML declaration every document starts with; the `Content-Type` must say UTF-8 too.
pub const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Appends `s` to `out`, escaped for use in XML text and in attribute values (either quote).
///
/// `&`, `<`, `>`, `"` and `'` become entity references (protocol.md 2.3). Characters XML 1.0
/// cannot carry at all, raw or escaped, are **dropped**: the control characters U+0000–U+001F
/// other than tab, LF and CR, and the non-characters U+FFFE and U+FFFF. Dropping keeps the
/// builders infallible; such characters never belong in a URL, a name or speech text, so losing
/// them changes nothing a caller would hear. (protocol.md 2.3 says "reject": callers that can
/// refuse an input, such as configuration validation, should check it with [`is_xml_safe`].)
pub fn escape_xml_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if !is_xml_char(c) => {}
            c => out.push(c),
        }
    }
}

/// `s` escaped for XML; see [`escape_xml_into`] for what is escaped and what is dropped.
pub fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_xml_into(&mut out, s);
    out
}

/// True when [`escape_xml`] would keep every character of `s` (nothing would be dropped).
pub fn is_xml_safe(s: &str) -> bool {
    s.chars().all(is_xml_char)
}

/// Whether XML 1.0 can carry `c` (its `Char` production; Rust `char`s are never surrogates).
fn is_xml_char(c: char) -> bool {
    match c {
        '\t' | '\n' | '\r' => true,
        '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => false,
        _ => true,
    }
}

/// A document: the declaration and `<Response>` around `body`.
fn document(body: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(XML_DECLARATION);
    out.push_str("<Response>");
    body(&mut out);
    out.push_str("</Response>");
    out
}

/// `<Say language="…">text</Say>`; without the attribute when `language` is empty.
fn say(out: &mut String, language: &str, text: &str) {
    out.push_str("<Say");
    if !language.is_empty() {
        out.push_str(" language=\"");
        escape_xml_into(out, language);
        out.push('"');
    }
    out.push('>');
    escape_xml_into(out, text);
    out.push_str("</Say>");
}

/// Twilio's limit on one `<Parameter>`: the combined length of its `name` and `value` must stay
/// under 500 characters (protocol.md 2.1). Counted here in bytes of the unescaped text, which
/// is never fewer than characters.
pub const MAX_PARAMETER_LEN: usize = 499;

/// `value` cut (at a character boundary) so that `name` + `value` fit [`MAX_PARAMETER_LEN`].
fn clip_parameter<'a>(name: &str, value: &'a str) -> &'a str {
    crate::wire::ws::truncate_at_char(value, MAX_PARAMETER_LEN.saturating_sub(name.len()))
}

/// The normal answer (protocol.md 2.1): a bidirectional stream to `stream_url` with the given
/// `<Parameter>`s (they arrive as `start.customParameters`), then a `<Redirect method="POST">` to
/// `redirect_url`, which Twilio fetches when we close the stream.
///
/// `stream_url` must be an absolute `wss://` URL without a query string (Twilio does not support
/// one there); the caller builds it. A parameter longer than Twilio accepts (a long SIP `From`)
/// has its value cut to [`MAX_PARAMETER_LEN`] rather than make Twilio refuse the document. An empty `redirect_url` leaves out the `<Redirect>`, so the
/// call hangs up when the stream ends.
pub fn connect_stream(stream_url: &str, parameters: &[(&str, &str)], redirect_url: &str) -> String {
    document(|out| {
        out.push_str("<Connect><Stream url=\"");
        escape_xml_into(out, stream_url);
        out.push_str("\">");
        for (name, value) in parameters {
            out.push_str("<Parameter name=\"");
            escape_xml_into(out, name);
            out.push_str("\" value=\"");
            escape_xml_into(out, clip_parameter(name, value));
            out.push_str("\"/>");
        }
        out.push_str("</Stream></Connect>");
        if !redirect_url.is_empty() {
            out.push_str("<Redirect method=\"POST\">");
            escape_xml_into(out, redirect_url);
            out.push_str("</Redirect>");
        }
    })
}

/// The human fallback (protocol.md 2.2): an optional `<Say>` (`(language, text)`), then the
/// caller joins the conference `room` that the operators join.
pub fn conference(say_first: Option<(&str, &str)>, room: &str) -> String {
    document(|out| {
        if let Some((language, text)) = say_first {
            say(out, language, text);
        }
        out.push_str("<Dial><Conference>");
        escape_xml_into(out, room);
        out.push_str("</Conference></Dial>");
    })
}

/// The busy / unavailable answer (protocol.md 2.2): an optional `<Say>` (`(language, text)`),
/// then `<Hangup/>`.
pub fn say_hangup(say_first: Option<(&str, &str)>) -> String {
    document(|out| {
        if let Some((language, text)) = say_first {
            say(out, language, text);
        }
        out.push_str("<Hangup/>");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_parameters_are_cut_under_twilios_limit_at_a_character_boundary() {
        let long_sip = format!("sip:{}@example.com", "a".repeat(600));
        let long_ja = "東".repeat(300);
        let doc = connect_stream(
            "wss://h/api/twilio/media-stream/c",
            &[("from", &long_sip), ("to", &long_ja), ("callId", "c_1")],
            "",
        );
        let texts = well_formed(&doc).unwrap();
        let from = texts.iter().find(|t| t.starts_with("sip:")).unwrap();
        assert_eq!("from".len() + from.len(), MAX_PARAMETER_LEN);
        let to = texts.iter().find(|t| t.starts_with('東')).unwrap();
        assert!("to".len() + to.len() <= MAX_PARAMETER_LEN);
        assert!(to.chars().all(|c| c == '東'));
        assert!(
            texts.iter().any(|t| t == "c_1"),
            "short values are untouched"
        );
    }

    /// A minimal XML well-formedness check, enough for the documents built here: one
    /// declaration, balanced tags with matching names, attribute values in double quotes,
    /// only the five predefined entity references, no raw `<` or `&` in text, no characters
    /// outside XML 1.0's `Char`. Returns the text content of every element, for inspection.
    fn well_formed(doc: &str) -> Result<Vec<String>, String> {
        let rest = doc
            .strip_prefix(XML_DECLARATION)
            .ok_or("missing declaration")?;
        let mut stack: Vec<&str> = Vec::new();
        let mut texts = Vec::new();
        let mut i = 0;
        let bytes = rest.as_bytes();
        let mut roots = 0;
        while i < bytes.len() {
            if bytes[i] == b'<' {
                let end = rest[i..].find('>').ok_or("unclosed tag")? + i;
                let tag = &rest[i + 1..end];
                if let Some(name) = tag.strip_prefix('/') {
                    let open = stack.pop().ok_or("close without open")?;
                    if open != name {
                        return Err(format!("</{name}> closes <{open}>"));
                    }
                } else {
                    let self_closing = tag.ends_with('/');
                    let tag = tag.trim_end_matches('/');
                    let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic()) {
                        return Err(format!("bad tag name {name:?}"));
                    }
                    while !attrs.is_empty() {
                        let (key, after) = attrs.split_once("=\"").ok_or("bad attribute")?;
                        if !key.chars().all(|c| c.is_ascii_alphabetic()) {
                            return Err(format!("bad attribute name {key:?}"));
                        }
                        let (value, after) = after.split_once('"').ok_or("unquoted value")?;
                        check_text(value)?;
                        texts.push(unescape(value));
                        attrs = after.strip_prefix(' ').unwrap_or(after);
                        if !after.is_empty() && !after.starts_with(' ') {
                            return Err("attributes not separated".into());
                        }
                    }
                    if stack.is_empty() {
                        roots += 1;
                    }
                    if !self_closing {
                        stack.push(name);
                    }
                }
                i = end + 1;
            } else {
                let end = rest[i..].find('<').map_or(rest.len(), |e| e + i);
                let text = &rest[i..end];
                if stack.is_empty() {
                    return Err("text outside the root".into());
                }
                check_text(text)?;
                texts.push(unescape(text));
                i = end;
            }
        }
        if !stack.is_empty() || roots != 1 {
            return Err("unbalanced document".into());
        }
        Ok(texts)
    }

    fn check_text(text: &str) -> Result<(), String> {
        if text.contains('<') || text.contains('"') {
            return Err(format!("raw markup in {text:?}"));
        }
        if !is_xml_safe(text) {
            return Err(format!("non-XML character in {text:?}"));
        }
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            let after = &rest[at..];
            let entity = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .into_iter()
                .find(|e| after.starts_with(e))
                .ok_or(format!("bad entity in {text:?}"))?;
            rest = &after[entity.len()..];
        }
        Ok(())
    }

    fn unescape(text: &str) -> String {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }

    #[test]
    fn escapes_markup_quotes_and_ampersands() {
        assert_eq!(
            escape_xml(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &apos;y&apos;)&lt;/script&gt;"
        );
        assert_eq!(escape_xml("&amp;"), "&amp;amp;");
    }

    #[test]
    fn drops_control_characters_but_keeps_tab_newlines_and_japanese() {
        assert_eq!(
            escape_xml("a\u{0}b\u{1b}c\u{1f}\t\n\r\u{fffe}日本語です"),
            "abc\t\n\r日本語です"
        );
        assert!(!is_xml_safe("a\u{7}"));
        assert!(is_xml_safe("担当者におつなぎします。\n"));
    }

    #[test]
    fn connect_stream_is_the_document_of_the_protocol() {
        let doc = connect_stream(
            "wss://bridge.example.com/api/twilio/media-stream/c_7f3a9e",
            &[
                ("callId", "c_7f3a9e"),
                ("agentId", "agent_sales_ja"),
                ("token", "q9vJ2kM1xZ"),
            ],
            "https://bridge.example.com/api/twilio/after-stream/c_7f3a9e",
        );
        assert_eq!(
            doc,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect>"#,
                r#"<Stream url="wss://bridge.example.com/api/twilio/media-stream/c_7f3a9e">"#,
                r#"<Parameter name="callId" value="c_7f3a9e"/>"#,
                r#"<Parameter name="agentId" value="agent_sales_ja"/>"#,
                r#"<Parameter name="token" value="q9vJ2kM1xZ"/>"#,
                r#"</Stream></Connect>"#,
                r#"<Redirect method="POST">https://bridge.example.com/api/twilio/after-stream/c_7f3a9e</Redirect>"#,
                r#"</Response>"#
            )
        );
        well_formed(&doc).unwrap();
    }

    #[test]
    fn connect_stream_without_redirect_ends_after_the_stream() {
        let doc = connect_stream("wss://h/s/1", &[], "");
        assert!(doc.ends_with("</Stream></Connect></Response>"));
        well_formed(&doc).unwrap();
    }

    #[test]
    fn redirect_query_strings_are_escaped() {
        let doc = connect_stream("wss://h/s/1", &[], "https://h/after?reason=hangup&n=2");
        assert!(doc.contains("https://h/after?reason=hangup&amp;n=2</Redirect>"));
        well_formed(&doc).unwrap();
    }

    #[test]
    fn fallback_documents_match_the_protocol() {
        assert_eq!(
            say_hangup(Some((
                "ja-JP",
                "ただいま電話が混み合っています。しばらくしてからおかけ直しください。"
            ))),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
                r#"<Say language="ja-JP">ただいま電話が混み合っています。しばらくしてからおかけ直しください。</Say>"#,
                r#"<Hangup/></Response>"#
            )
        );
        assert_eq!(
            conference(
                Some(("ja-JP", "担当者におつなぎします。")),
                "support-room-1"
            ),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
                r#"<Say language="ja-JP">担当者におつなぎします。</Say>"#,
                r#"<Dial><Conference>support-room-1</Conference></Dial></Response>"#
            )
        );
        assert_eq!(
            say_hangup(None),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#
        );
        assert_eq!(
            say_hangup(Some(("", "bye"))),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>bye</Say><Hangup/></Response>"#
        );
    }

    #[test]
    fn hostile_input_cannot_break_out_of_its_place() {
        let hostile = "\"/><Hangup/><Say a='&'>x</Say><!-- \u{0}";
        for (doc, real_hangups) in [
            (connect_stream(hostile, &[(hostile, hostile)], hostile), 0),
            (conference(Some((hostile, hostile)), hostile), 0),
            (say_hangup(Some((hostile, hostile))), 1),
        ] {
            let texts = well_formed(&doc).unwrap();
            assert_eq!(doc.matches("<Hangup/>").count(), real_hangups, "{doc}");
            assert!(texts
                .iter()
                .any(|t| t == "\"/><Hangup/><Say a='&'>x</Say><!-- "));
        }
    }

    #[test]
    fn the_checker_rejects_broken_documents() {
        for bad in [
            "<Response>",
            "<Response><Say>a & b</Say></Response>",
            "<Response><Say>a < b</Say></Response>",
            "<Response><Say>a</Hangup></Response>",
            "<Response><Stream url=\"a\"b\"/></Response>",
            "<Response>\u{1}</Response>",
            "<Response/><Response/>",
        ] {
            assert!(
                well_formed(&format!("{XML_DECLARATION}{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_input_gives_a_well_formed_document_that_keeps_the_text(
            a in "\\PC{0,20}|[&<>\"'\u{0}-\u{1f}a]{0,20}",
            b in "\\PC{0,20}|[&<>\"'\u{0}-\u{1f}a]{0,20}",
        ) {
            for doc in [
                connect_stream(&a, &[(&a, &b), (&b, &a)], &b),
                conference(Some((&a, &b)), &a),
                say_hangup(Some((&a, &b))),
            ] {
                let texts = well_formed(&doc).map_err(TestCaseError::fail)?;
                let kept: String = b.chars().filter(|c| is_xml_char(*c)).collect();
                prop_assert!(kept.is_empty() || texts.contains(&kept));
            }
        }
    }
}
