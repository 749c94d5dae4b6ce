//! Reads the TwiML callbridge answers, strictly, the way Twilio would have to (protocol.md 2).
//!
//! A small XML reader (elements, attributes, text, the five named entities and character
//! references, comments, CDATA, the XML declaration) builds a tree, and [`Twiml`] gives the
//! verbs the simulated caller acts on. Strictness is the point: a raw `&`, an unclosed tag, a
//! control character or a `<Stream url>` that is not a plain `wss://` URL is exactly what makes
//! the real Twilio play its application-error message, so the simulator refuses it with a reason.

/// Deepest element nesting accepted; TwiML is 3 levels deep, anything near this is garbage.
pub const MAX_DEPTH: usize = 32;

/// Why a document is not TwiML the simulated Twilio would execute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TwimlError {
    /// The document ended inside a construct.
    #[error("xml ends early")]
    UnexpectedEnd,
    /// A character that cannot appear where it was found.
    #[error("unexpected {found:?} at byte {at}")]
    Unexpected {
        /// Byte offset.
        at: usize,
        /// The character.
        found: char,
    },
    /// `&` not starting a known entity or a valid character reference.
    #[error("bad entity at byte {at}")]
    BadEntity {
        /// Byte offset of the `&`.
        at: usize,
    },
    /// A closing tag that does not match the open element.
    #[error("closing tag </{found}> does not match <{open}>")]
    MismatchedTag {
        /// The open element.
        open: String,
        /// The closing tag found.
        found: String,
    },
    /// The same attribute twice on one element.
    #[error("duplicate attribute {0}")]
    DuplicateAttribute(String),
    /// A control character XML 1.0 cannot carry.
    #[error("control character at byte {at}")]
    ControlCharacter {
        /// Byte offset.
        at: usize,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("elements nested too deep")]
    TooDeep,
    /// Something other than whitespace or comments after the root element.
    #[error("content after the root element")]
    TrailingContent,
    /// The root element is not `<Response>`.
    #[error("root element is <{0}>, not <Response>")]
    NotResponse(String),
    /// A verb lacks what it needs (e.g. `<Stream>` without `url`, `<Parameter>` without `name`).
    #[error("<{verb}> lacks {what}")]
    Missing {
        /// The element.
        verb: &'static str,
        /// What is missing.
        what: &'static str,
    },
    /// `<Stream url>` is not an absolute `wss://host/path` URL without query or fragment.
    #[error("stream url {0:?} is not wss://host/path (no query string allowed)")]
    BadStreamUrl(String),
    /// `<Redirect>` URL is not an absolute `http(s)://` URL.
    #[error("redirect url {0:?} is not absolute http(s)")]
    BadRedirectUrl(String),
}

/// An XML element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Tag name.
    pub name: String,
    /// Attributes in document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child nodes in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The concatenated text children, trimmed.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s.trim().to_owned()
    }
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Text, unescaped.
    Text(String),
}

/// `<Connect><Stream>`: where Twilio opens the Media Stream, and what it passes in `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamVerb {
    /// The `url` attribute, unescaped (`wss://…`).
    pub url: String,
    /// Host part of `url` (the public name; the simulator connects to the local address).
    pub host: String,
    /// Path part of `url`, starting with `/`.
    pub path: String,
    /// The `<Parameter>` children, in document order; they become `start.customParameters`.
    pub parameters: Vec<(String, String)>,
}

/// `<Redirect>`: the next TwiML to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectVerb {
    /// The URL, unescaped, exactly as written (it is what Twilio signs).
    pub url: String,
    /// `POST` (default) or `GET`.
    pub method: String,
}

/// One TwiML verb the simulator understands; others are kept by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `<Connect>`, with its `<Stream>` if any.
    Connect(Option<StreamVerb>),
    /// `<Say>` with its text and `language`.
    Say {
        /// The text.
        text: String,
        /// The `language` attribute.
        language: Option<String>,
    },
    /// `<Dial>`; `conference` is set for `<Dial><Conference>name</Conference></Dial>`.
    Dial {
        /// The conference room, if it dials one.
        conference: Option<String>,
        /// The text content (a number), if it dials one directly.
        number: Option<String>,
    },
    /// `<Redirect>`.
    Redirect(RedirectVerb),
    /// `<Hangup/>`.
    Hangup,
    /// `<Reject/>`.
    Reject,
    /// Any other verb, by name.
    Other(String),
}

/// A parsed `<Response>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Twiml {
    /// The verbs, in order.
    pub verbs: Vec<Verb>,
}

impl Twiml {
    /// Parses and checks a TwiML document.
    pub fn parse(doc: &str) -> Result<Self, TwimlError> {
        let root = parse_xml(doc)?;
        if root.name != "Response" {
            return Err(TwimlError::NotResponse(root.name));
        }
        let verbs = root.elements().map(verb).collect::<Result<_, _>>()?;
        Ok(Twiml { verbs })
    }

    /// The `<Connect><Stream>`, if the document opens a stream.
    pub fn stream(&self) -> Option<&StreamVerb> {
        self.verbs.iter().find_map(|v| match v {
            Verb::Connect(s) => s.as_ref(),
            _ => None,
        })
    }

    /// The first `<Redirect>` after the `<Connect>` (what Twilio runs when our side closes the
    /// stream); without a `<Connect>`, the first `<Redirect>`.
    pub fn redirect_after_stream(&self) -> Option<&RedirectVerb> {
        let start = self
            .verbs
            .iter()
            .position(|v| matches!(v, Verb::Connect(_)))
            .map_or(0, |i| i + 1);
        self.verbs[start..].iter().find_map(|v| match v {
            Verb::Redirect(r) => Some(r),
            _ => None,
        })
    }

    /// The conference room of a `<Dial><Conference>`, if any.
    pub fn conference(&self) -> Option<&str> {
        self.verbs.iter().find_map(|v| match v {
            Verb::Dial { conference, .. } => conference.as_deref(),
            _ => None,
        })
    }
}

/// Builds one verb from its element.
fn verb(e: &Element) -> Result<Verb, TwimlError> {
    Ok(match e.name.as_str() {
        "Connect" => Verb::Connect(match e.elements().find(|c| c.name == "Stream") {
            Some(s) => Some(stream_verb(s)?),
            None => None,
        }),
        "Say" => Verb::Say {
            text: e.text(),
            language: e.attr("language").map(str::to_owned),
        },
        "Dial" => Verb::Dial {
            conference: e
                .elements()
                .find(|c| c.name == "Conference")
                .map(Element::text),
            number: Some(e.text()).filter(|t| !t.is_empty()),
        },
        "Redirect" => {
            let url = e.text();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(TwimlError::BadRedirectUrl(url));
            }
            Verb::Redirect(RedirectVerb {
                url,
                method: e.attr("method").unwrap_or("POST").to_ascii_uppercase(),
            })
        }
        "Hangup" => Verb::Hangup,
        "Reject" => Verb::Reject,
        other => Verb::Other(other.to_owned()),
    })
}

/// Builds `<Stream>` and checks its URL the way Twilio needs it.
fn stream_verb(e: &Element) -> Result<StreamVerb, TwimlError> {
    let url = e.attr("url").ok_or(TwimlError::Missing {
        verb: "Stream",
        what: "url",
    })?;
    let (host, path) = split_wss_url(url)?;
    let mut parameters = Vec::new();
    for p in e.elements().filter(|c| c.name == "Parameter") {
        let name = p.attr("name").ok_or(TwimlError::Missing {
            verb: "Parameter",
            what: "name",
        })?;
        let value = p.attr("value").ok_or(TwimlError::Missing {
            verb: "Parameter",
            what: "value",
        })?;
        parameters.push((name.to_owned(), value.to_owned()));
    }
    Ok(StreamVerb {
        url: url.to_owned(),
        host: host.to_owned(),
        path: path.to_owned(),
        parameters,
    })
}

/// Splits `wss://host[:port]/path` into host and path; refuses other schemes, an empty host, a
/// query string (protocol.md 2.1: not supported, can fail the handshake) and a fragment.
pub fn split_wss_url(url: &str) -> Result<(&str, &str), TwimlError> {
    let bad = || TwimlError::BadStreamUrl(url.to_owned());
    let rest = url.strip_prefix("wss://").ok_or_else(bad)?;
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if host.is_empty() || url.contains(['?', '#']) || url.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host, path))
}

/// Splits an absolute `http(s)://host[:port]/path?query` into host and path-and-query.
pub fn split_http_url(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (host, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => rest.split_at(i),
        Some(_) | None => return None,
    };
    (!host.is_empty()).then_some((host, path))
}

/// Parses an XML document into its root element.
pub fn parse_xml(doc: &str) -> Result<Element, TwimlError> {
    let mut r = Reader {
        s: doc.strip_prefix('\u{feff}').unwrap_or(doc),
        pos: 0,
    };
    r.check_controls()?;
    r.skip_misc()?;
    if r.s[r.pos..].starts_with("<?xml") {
        r.expect_past("?>")?;
        r.skip_misc()?;
    }
    let root = r.element(0)?;
    r.skip_misc()?;
    if r.pos != r.s.len() {
        return Err(TwimlError::TrailingContent);
    }
    Ok(root)
}

/// Cursor over the document.
struct Reader<'a> {
    /// The document.
    s: &'a str,
    /// Byte offset of the next character.
    pos: usize,
}

impl Reader<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn unexpected(&self) -> TwimlError {
        match self.peek() {
            Some(found) => TwimlError::Unexpected {
                at: self.pos,
                found,
            },
            None => TwimlError::UnexpectedEnd,
        }
    }

    /// XML 1.0 forbids C0 controls other than tab, LF and CR.
    fn check_controls(&self) -> Result<(), TwimlError> {
        match self
            .s
            .char_indices()
            .find(|&(_, c)| c < ' ' && !matches!(c, '\t' | '\n' | '\r'))
        {
            Some((at, _)) => Err(TwimlError::ControlCharacter { at }),
            None => Ok(()),
        }
    }

    /// Moves past the next `pat`.
    fn expect_past(&mut self, pat: &str) -> Result<(), TwimlError> {
        let i = self.rest().find(pat).ok_or(TwimlError::UnexpectedEnd)?;
        self.pos += i + pat.len();
        Ok(())
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start_matches([' ', '\t', '\n', '\r']);
        self.pos = self.s.len() - trimmed.len();
    }

    /// Skips whitespace and comments.
    fn skip_misc(&mut self) -> Result<(), TwimlError> {
        loop {
            self.skip_ws();
            if self.rest().starts_with("<!--") {
                self.expect_past("-->")?;
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, TwimlError> {
        let len = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
            .unwrap_or(self.rest().len());
        if len == 0
            || !self
                .rest()
                .starts_with(|c: char| c.is_alphabetic() || c == '_')
        {
            return Err(self.unexpected());
        }
        let name = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(name)
    }

    /// Parses `<name attrs…>children</name>` or `<name attrs…/>` at the cursor.
    fn element(&mut self, depth: usize) -> Result<Element, TwimlError> {
        if depth >= MAX_DEPTH {
            return Err(TwimlError::TooDeep);
        }
        if self.peek() != Some('<') {
            return Err(self.unexpected());
        }
        self.pos += 1;
        let name = self.name()?;
        let mut attrs: Vec<(String, String)> = Vec::new();
        loop {
            self.skip_ws();
            if self.rest().starts_with("/>") {
                self.pos += 2;
                return Ok(Element {
                    name,
                    attrs,
                    children: Vec::new(),
                });
            }
            if self.peek() == Some('>') {
                self.pos += 1;
                break;
            }
            let (k, v) = self.attribute()?;
            if attrs.iter().any(|(a, _)| *a == k) {
                return Err(TwimlError::DuplicateAttribute(k));
            }
            attrs.push((k, v));
        }
        let children = self.children(&name, depth)?;
        Ok(Element {
            name,
            attrs,
            children,
        })
    }

    /// Parses `name="value"` (or single quotes).
    fn attribute(&mut self) -> Result<(String, String), TwimlError> {
        let name = self.name()?;
        self.skip_ws();
        if self.peek() != Some('=') {
            return Err(self.unexpected());
        }
        self.pos += 1;
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.unexpected()),
        };
        self.pos += 1;
        let len = self.rest().find(quote).ok_or(TwimlError::UnexpectedEnd)?;
        let raw_at = self.pos;
        let raw = &self.s[raw_at..raw_at + len];
        if let Some(i) = raw.find('<') {
            return Err(TwimlError::Unexpected {
                at: raw_at + i,
                found: '<',
            });
        }
        let value = unescape(raw, raw_at)?;
        self.pos += len + 1;
        Ok((name, value))
    }

    /// Parses children up to and including `</name>`.
    fn children(&mut self, name: &str, depth: usize) -> Result<Vec<Node>, TwimlError> {
        let mut children = Vec::new();
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(TwimlError::UnexpectedEnd);
            }
            if rest.starts_with("</") {
                self.pos += 2;
                let close = self.name()?;
                self.skip_ws();
                if close != name {
                    return Err(TwimlError::MismatchedTag {
                        open: name.to_owned(),
                        found: close,
                    });
                }
                if self.peek() != Some('>') {
                    return Err(self.unexpected());
                }
                self.pos += 1;
                return Ok(children);
            } else if rest.starts_with("<!--") {
                self.expect_past("-->")?;
            } else if let Some(body) = rest.strip_prefix("<![CDATA[") {
                let end = body.find("]]>").ok_or(TwimlError::UnexpectedEnd)?;
                children.push(Node::Text(body[..end].to_owned()));
                self.pos += "<![CDATA[".len() + end + 3;
            } else if rest.starts_with('<') {
                children.push(Node::Element(self.element(depth + 1)?));
            } else {
                let len = rest.find('<').unwrap_or(rest.len());
                let raw_at = self.pos;
                children.push(Node::Text(unescape(&rest[..len], raw_at)?));
                self.pos += len;
            }
        }
    }
}

/// Replaces the five named entities and `&#…;` / `&#x…;` references; `base` is the byte offset
/// of `raw` in the document, for errors.
fn unescape(raw: &str, base: usize) -> Result<String, TwimlError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let at = base + (raw.len() - rest.len()) + i;
        let bad = TwimlError::BadEntity { at };
        let after = &rest[i + 1..];
        let end = after.find(';').filter(|&e| e <= 10).ok_or(bad.clone())?;
        let c = match &after[..end] {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            num => char_ref(num).ok_or(bad)?,
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `#123` or `#x7B` to the character, if it is one XML allows.
fn char_ref(num: &str) -> Option<char> {
    let digits = num.strip_prefix('#')?;
    let code = match digits.strip_prefix('x') {
        Some(hex) if !hex.is_empty() => u32::from_str_radix(hex, 16).ok()?,
        Some(_) => return None,
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse().ok()?
        }
        None => return None,
    };
    let c = char::from_u32(code)?;
    (c >= ' ' || matches!(c, '\t' | '\n' | '\r')).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// protocol.md 2.1, verbatim.
    const NORMAL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Connect>
    <Stream url="wss://bridge.example.com/api/twilio/media-stream/c_7f3a9e">
      <Parameter name="callId" value="c_7f3a9e"/>
      <Parameter name="agentId" value="agent_sales_ja"/>
      <Parameter name="token" value="q9vJ2kM1xZ"/>
    </Stream>
  </Connect>
  <Redirect method="POST">https://bridge.example.com/api/twilio/after-stream/c_7f3a9e</Redirect>
</Response>
"#;

    #[test]
    fn the_normal_answer_gives_stream_parameters_and_redirect() {
        let t = Twiml::parse(NORMAL).unwrap();
        let s = t.stream().unwrap();
        assert_eq!(s.host, "bridge.example.com");
        assert_eq!(s.path, "/api/twilio/media-stream/c_7f3a9e");
        assert_eq!(
            s.parameters,
            vec![
                ("callId".to_owned(), "c_7f3a9e".to_owned()),
                ("agentId".to_owned(), "agent_sales_ja".to_owned()),
                ("token".to_owned(), "q9vJ2kM1xZ".to_owned()),
            ]
        );
        let r = t.redirect_after_stream().unwrap();
        assert_eq!(
            r.url,
            "https://bridge.example.com/api/twilio/after-stream/c_7f3a9e"
        );
        assert_eq!(r.method, "POST");
        assert_eq!(t.conference(), None);
    }

    #[test]
    fn fallback_answers_are_recognised() {
        let busy = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Say language=\"ja-JP\">ただいま電話が混み合っています。</Say>\n  <Hangup/>\n</Response>\n";
        let t = Twiml::parse(busy).unwrap();
        assert_eq!(t.stream(), None);
        assert_eq!(
            t.verbs,
            vec![
                Verb::Say {
                    text: "ただいま電話が混み合っています。".to_owned(),
                    language: Some("ja-JP".to_owned())
                },
                Verb::Hangup
            ]
        );
        let human = "<Response><Say language=\"ja-JP\">担当者におつなぎします。</Say><Dial><Conference>support-room-1</Conference></Dial></Response>";
        let t = Twiml::parse(human).unwrap();
        assert_eq!(t.conference(), Some("support-room-1"));
        assert_eq!(
            Twiml::parse("<Response><Reject/></Response>")
                .unwrap()
                .verbs,
            vec![Verb::Reject]
        );
    }

    #[test]
    fn escaped_values_are_unescaped() {
        let doc = r#"<Response><Connect><Stream url="wss://h.example/p"><Parameter name="a&amp;b" value='&lt;&gt;&quot;&apos;&#65;&#x42;'/></Stream></Connect><Redirect>https://h.example/x?a=1&amp;b=2</Redirect></Response>"#;
        let t = Twiml::parse(doc).unwrap();
        assert_eq!(
            t.stream().unwrap().parameters,
            vec![("a&b".to_owned(), "<>\"'AB".to_owned())]
        );
        assert_eq!(
            t.redirect_after_stream().unwrap().url,
            "https://h.example/x?a=1&b=2"
        );
    }

    #[test]
    fn a_raw_ampersand_makes_the_document_invalid() {
        let doc = r#"<Response><Say>Tom & Jerry</Say></Response>"#;
        assert_eq!(Twiml::parse(doc), Err(TwimlError::BadEntity { at: 19 }));
        let attr = r#"<Response><Connect><Stream url="wss://h/p?a=1&b=2"/></Connect></Response>"#;
        assert!(matches!(
            Twiml::parse(attr),
            Err(TwimlError::BadEntity { .. })
        ));
        assert!(matches!(
            parse_xml("<a>&#0;</a>"),
            Err(TwimlError::BadEntity { .. })
        ));
        assert!(matches!(
            parse_xml("<a>&nbsp;</a>"),
            Err(TwimlError::BadEntity { .. })
        ));
    }

    #[test]
    fn malformed_xml_is_refused_with_a_reason() {
        assert_eq!(parse_xml(""), Err(TwimlError::UnexpectedEnd));
        assert_eq!(parse_xml("<Response>"), Err(TwimlError::UnexpectedEnd));
        assert_eq!(
            parse_xml("<Response></Connect>"),
            Err(TwimlError::MismatchedTag {
                open: "Response".to_owned(),
                found: "Connect".to_owned()
            })
        );
        assert_eq!(
            parse_xml("<a x='1' x='2'/>"),
            Err(TwimlError::DuplicateAttribute("x".to_owned()))
        );
        assert_eq!(parse_xml("<a/><b/>"), Err(TwimlError::TrailingContent));
        assert_eq!(
            parse_xml("<a>\u{1}</a>"),
            Err(TwimlError::ControlCharacter { at: 3 })
        );
        assert!(matches!(
            parse_xml("<a x=1/>"),
            Err(TwimlError::Unexpected { found: '1', .. })
        ));
        assert!(matches!(
            parse_xml("<a x='<'/>"),
            Err(TwimlError::Unexpected { found: '<', .. })
        ));
        assert_eq!(parse_xml(&"<a>".repeat(100)), Err(TwimlError::TooDeep));
        assert_eq!(
            Twiml::parse("<Reponse/>"),
            Err(TwimlError::NotResponse("Reponse".to_owned()))
        );
    }

    #[test]
    fn comments_cdata_and_bom_are_accepted() {
        let e =
            parse_xml("\u{feff}<!-- c --><a><!-- x --><![CDATA[<&>]]></a><!-- end -->").unwrap();
        assert_eq!(e.text(), "<&>");
    }

    #[test]
    fn stream_urls_must_be_plain_wss() {
        for bad in [
            "https://h/p",
            "ws://h/p",
            "wss:///p",
            "wss://h/p?x=1",
            "wss://h/p#f",
            "/relative",
        ] {
            assert_eq!(
                split_wss_url(bad),
                Err(TwimlError::BadStreamUrl(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(split_wss_url("wss://h:443/a/b"), Ok(("h:443", "/a/b")));
        assert_eq!(split_wss_url("wss://h"), Ok(("h", "/")));
        let no_url = "<Response><Connect><Stream/></Connect></Response>";
        assert_eq!(
            Twiml::parse(no_url),
            Err(TwimlError::Missing {
                verb: "Stream",
                what: "url"
            })
        );
        let no_value =
            "<Response><Connect><Stream url='wss://h/p'><Parameter name='a'/></Stream></Connect></Response>";
        assert_eq!(
            Twiml::parse(no_value),
            Err(TwimlError::Missing {
                verb: "Parameter",
                what: "value"
            })
        );
    }

    #[test]
    fn redirect_urls_must_be_absolute_http() {
        assert_eq!(
            Twiml::parse("<Response><Redirect>/after</Redirect></Response>"),
            Err(TwimlError::BadRedirectUrl("/after".to_owned()))
        );
        assert_eq!(
            split_http_url("https://h.example/a?b=1"),
            Some(("h.example", "/a?b=1"))
        );
        assert_eq!(split_http_url("https://h.example?b=1"), None);
        assert_eq!(split_http_url("ftp://h/a"), None);
    }
}
