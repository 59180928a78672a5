//! Pure TwiML builders: exact strings, no I/O.
//!
//! The output has the same structure Twilio's Python helper library (`VoiceResponse.to_xml()`)
//! emits: the `<?xml version="1.0" encoding="UTF-8"?>` prolog directly followed by `<Response>`,
//! no whitespace between elements, attributes sorted by name, and empty elements written
//! `<Name attr="v" />`. Text and attribute values escape `& < > " '` (the helper library leaves
//! `'` and `"` in text as is; escaping them is equivalent XML). Line breaks and tabs in
//! attributes become character references so they survive attribute-value normalisation.

use std::fmt::Write as _;

use crate::xml::escape_into;

/// The XML prolog every document starts with.
pub const PROLOG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// A `<Say>` verb.
#[derive(Clone, Copy, Debug)]
pub struct Say<'a> {
    /// Text to speak.
    pub text: &'a str,
    /// `voice` attribute, e.g. `Polly.Joanna`; `None` omits it.
    pub voice: Option<&'a str>,
    /// `language` attribute, e.g. `en-US`; `None` omits it.
    pub language: Option<&'a str>,
}

/// The `<Connect><Stream>` document answered to an incoming call.
#[derive(Clone, Copy, Debug)]
pub struct ConnectStream<'a> {
    /// Optional greeting spoken before connecting.
    pub greeting: Option<Say<'a>>,
    /// `<Connect action>`: requested when the stream ends.
    pub action: &'a str,
    /// `<Stream url>`: the `wss://` URL, without a query string.
    pub stream_url: &'a str,
    /// `<Stream statusCallback>`: stream lifecycle callbacks.
    pub status_callback: &'a str,
    /// `<Parameter name value>` children, delivered in `start.customParameters`.
    pub parameters: &'a [(&'a str, &'a str)],
}

/// The fallback document: a prompt then `<Record>`.
#[derive(Clone, Copy, Debug)]
pub struct RecordFallback<'a> {
    /// Prompt spoken before the beep.
    pub prompt: Say<'a>,
    /// `<Record action>`: where Twilio posts the recording.
    pub action: &'a str,
    /// `<Record maxLength>` in seconds.
    pub max_length_secs: u64,
}

/// Builds the `<Connect><Stream>` response.
pub fn connect_stream(doc: &ConnectStream<'_>) -> String {
    let mut out = open_response();
    if let Some(say) = &doc.greeting {
        push_say(&mut out, say);
    }
    open(&mut out, "Connect", &[("action", doc.action)]);
    open(
        &mut out,
        "Stream",
        &[
            ("statusCallback", doc.status_callback),
            ("url", doc.stream_url),
        ],
    );
    for (name, value) in doc.parameters {
        empty(&mut out, "Parameter", &[("name", name), ("value", value)]);
    }
    out.push_str("</Stream></Connect>");
    close_response(out)
}

/// Builds the fallback response: prompt then `<Record>`.
pub fn record_fallback(doc: &RecordFallback<'_>) -> String {
    let mut out = open_response();
    push_say(&mut out, &doc.prompt);
    let max = doc.max_length_secs.to_string();
    empty(
        &mut out,
        "Record",
        &[
            ("action", doc.action),
            ("maxLength", &max),
            ("method", "POST"),
        ],
    );
    close_response(out)
}

/// `<Response><Say>…</Say><Hangup /></Response>`: an apology, then the call ends.
pub fn say_and_hangup(say: &Say<'_>) -> String {
    let mut out = open_response();
    push_say(&mut out, say);
    empty(&mut out, "Hangup", &[]);
    close_response(out)
}

/// `<Response><Hangup /></Response>`: ends the call.
pub fn hangup() -> String {
    let mut out = open_response();
    empty(&mut out, "Hangup", &[]);
    close_response(out)
}

/// `<Response><Redirect method="POST">url</Redirect></Response>`: Twilio requests `url` for the
/// call's next TwiML (a drained call goes back to the voice webhook, on a ready instance).
pub fn redirect(url: &str) -> String {
    let mut out = open_response();
    open(&mut out, "Redirect", &[("method", "POST")]);
    escape_into(&mut out, url);
    out.push_str("</Redirect>");
    close_response(out)
}

/// What [`dial`] writes.
#[derive(Clone, Copy, Debug)]
pub struct Dial<'a> {
    /// The checked target.
    pub target: &'a crate::ending::TransferTarget,
    /// `<Dial callerId>`, if set.
    pub caller_id: Option<&'a str>,
    /// `<Dial timeout>` in seconds.
    pub timeout_s: u32,
    /// `<Dial action>`: Twilio reports the outcome (`DialCallStatus`) there.
    pub action: &'a str,
}

/// `<Response><Dial action=… callerId=… method="POST" timeout=…><Number>…</Number></Dial>
/// </Response>` (or `<Sip>` for a SIP target): a transfer.
pub fn dial(doc: &Dial<'_>) -> String {
    let mut out = open_response();
    let timeout = doc.timeout_s.to_string();
    let mut attrs: Vec<(&str, &str)> = vec![("action", doc.action)];
    if let Some(caller_id) = doc.caller_id {
        attrs.push(("callerId", caller_id));
    }
    attrs.push(("method", "POST"));
    attrs.push(("timeout", &timeout));
    open(&mut out, "Dial", &attrs);
    let (noun, value) = match doc.target {
        crate::ending::TransferTarget::Number(n) => ("Number", n.as_str()),
        crate::ending::TransferTarget::Sip(uri) => ("Sip", uri.as_str()),
    };
    open(&mut out, noun, &[]);
    escape_into(&mut out, value);
    out.push_str("</");
    out.push_str(noun);
    out.push_str("></Dial>");
    close_response(out)
}

/// `<Response />`: an empty document.
pub fn empty_response() -> String {
    format!("{PROLOG}<Response />")
}

fn open_response() -> String {
    let mut out = String::with_capacity(512);
    out.push_str(PROLOG);
    out.push_str("<Response>");
    out
}

fn close_response(mut out: String) -> String {
    out.push_str("</Response>");
    out
}

fn push_say(out: &mut String, say: &Say<'_>) {
    let mut attrs: Vec<(&str, &str)> = Vec::with_capacity(2);
    if let Some(language) = say.language {
        attrs.push(("language", language));
    }
    if let Some(voice) = say.voice {
        attrs.push(("voice", voice));
    }
    open(out, "Say", &attrs);
    escape_into(out, say.text);
    out.push_str("</Say>");
}

/// Writes `<name a="v" …>`; `attrs` must already be sorted by name.
fn open(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    start_tag(out, name, attrs);
    out.push('>');
}

/// Writes `<name a="v" … />`; `attrs` must already be sorted by name.
fn empty(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    start_tag(out, name, attrs);
    out.push_str(" />");
}

fn start_tag(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    debug_assert!(
        attrs.windows(2).all(|w| w[0].0 < w[1].0),
        "attributes sorted"
    );
    let _ = write!(out, "<{name}");
    for (key, value) in attrs {
        let _ = write!(out, " {key}=\"");
        escape_into(out, value);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::escape;

    #[test]
    fn connect_stream_matches_helper_library_structure() {
        let xml = connect_stream(&ConnectStream {
            greeting: None,
            action: "https://v.example.com/webhook/stream_ended",
            stream_url: "wss://v.example.com/ws/twilio-media",
            status_callback: "https://v.example.com/webhook/stream_status",
            parameters: &[("callSid", "CA1"), ("token", "t0k")],
        });
        assert_eq!(
            xml,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
                r#"<Connect action="https://v.example.com/webhook/stream_ended">"#,
                r#"<Stream statusCallback="https://v.example.com/webhook/stream_status" url="wss://v.example.com/ws/twilio-media">"#,
                r#"<Parameter name="callSid" value="CA1" /><Parameter name="token" value="t0k" />"#,
                r#"</Stream></Connect></Response>"#
            )
        );
    }

    #[test]
    fn greeting_comes_before_connect_with_sorted_attributes() {
        let xml = connect_stream(&ConnectStream {
            greeting: Some(Say {
                text: "Hi & welcome",
                voice: Some("Polly.Joanna"),
                language: Some("en-US"),
            }),
            action: "a",
            stream_url: "wss://h/ws",
            status_callback: "s",
            parameters: &[],
        });
        assert!(xml.starts_with(concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
            r#"<Say language="en-US" voice="Polly.Joanna">Hi &amp; welcome</Say><Connect"#
        )));
    }

    #[test]
    fn all_five_special_characters_are_escaped_in_attributes_and_text() {
        assert_eq!(escape(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
        let xml = record_fallback(&RecordFallback {
            prompt: Say {
                text: "<Hangup/>",
                voice: None,
                language: None,
            },
            action: "https://h/r?a=1&b='2'",
            max_length_secs: 60,
        });
        assert_eq!(
            xml,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
                r#"<Say>&lt;Hangup/&gt;</Say>"#,
                r#"<Record action="https://h/r?a=1&amp;b=&apos;2&apos;" maxLength="60" method="POST" />"#,
                r#"</Response>"#
            )
        );
    }

    #[test]
    fn control_characters_cannot_break_the_document() {
        assert_eq!(escape("a\nb\u{0}c"), "a&#10;bc");
    }

    #[test]
    fn dial_names_the_number_or_sip_uri() {
        let number = crate::ending::TransferTarget::Number("+15557654321".into());
        let xml = dial(&Dial {
            target: &number,
            caller_id: Some("+15550001111"),
            timeout_s: 20,
            action: "https://h/webhook/dial_ended",
        });
        assert!(
            xml.ends_with(
                r#"<Response><Dial action="https://h/webhook/dial_ended" callerId="+15550001111" method="POST" timeout="20"><Number>+15557654321</Number></Dial></Response>"#
            ),
            "{xml}"
        );
        let sip = crate::ending::TransferTarget::Sip("sip:a@pbx.example.com;x=1&y=2".into());
        let xml = dial(&Dial {
            target: &sip,
            caller_id: None,
            timeout_s: 30,
            action: "https://h/d",
        });
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let node = doc.descendants().find(|n| n.has_tag_name("Sip")).unwrap();
        assert_eq!(node.text(), Some("sip:a@pbx.example.com;x=1&y=2"));
    }

    #[test]
    fn redirect_escapes_its_url() {
        let xml = redirect("https://h/webhook/incoming_call?hop=1&x=<y>");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let node = doc
            .descendants()
            .find(|n| n.has_tag_name("Redirect"))
            .unwrap();
        assert_eq!(node.attribute("method"), Some("POST"));
        assert_eq!(
            node.text(),
            Some("https://h/webhook/incoming_call?hop=1&x=<y>")
        );
    }

    #[test]
    fn hangup_and_empty_documents() {
        assert_eq!(
            hangup(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>"#
        );
        assert_eq!(
            empty_response(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response />"#
        );
    }

    #[test]
    fn busy_apology_says_then_hangs_up() {
        let xml = say_and_hangup(&Say {
            text: "Sorry & goodbye",
            voice: None,
            language: Some("en-US"),
        });
        assert!(
            xml.ends_with("<Say language=\"en-US\">Sorry &amp; goodbye</Say><Hangup /></Response>"),
            "{xml}"
        );
    }
}
