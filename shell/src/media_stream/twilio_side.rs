//! Twilio's side of a bidirectional Media Stream: the messages Twilio sends, written as Twilio
//! writes them, and the three it accepts, read as strictly as Twilio reads them.
//!
//! The call simulator (`handset-sim`) plays Twilio with these, so the protocol has one place:
//! this module's tests check that what [`TwilioWriter`] writes is what [`super::parse`] reads,
//! and that what [`super::Writer`] writes is what [`parse_to_twilio`] accepts.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

/// Writes the messages Twilio sends on one stream (`connected`, `start`, `media`, `mark`,
/// `dtmf`, `stop`), numbering them with `sequenceNumber` from 1 as Twilio does. Each message is
/// written into one reused buffer and borrowed from it until the next.
#[derive(Debug)]
pub struct TwilioWriter {
    /// The `streamSid`, as a JSON string (quoted and escaped once).
    stream_sid: String,
    /// The `accountSid`, as a JSON string.
    account_sid: String,
    /// The next `sequenceNumber`.
    seq: u64,
    buf: String,
}

impl TwilioWriter {
    /// A writer for the stream `stream_sid` of account `account_sid`.
    pub fn new(stream_sid: &str, account_sid: &str) -> Self {
        Self {
            stream_sid: json_string(stream_sid),
            account_sid: json_string(account_sid),
            seq: 1,
            buf: String::with_capacity(512),
        }
    }

    /// `connected`, the first message (unnumbered).
    pub fn connected(&self) -> &'static str {
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#
    }

    /// `start`: the call, the inbound track, 8 kHz µ-law, and the TwiML's `<Parameter>`s.
    pub fn start<'p>(
        &mut self,
        call_sid: &str,
        parameters: impl IntoIterator<Item = (&'p str, &'p str)>,
    ) -> &str {
        let params: serde_json::Map<String, serde_json::Value> = parameters
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        let seq = self.next_seq();
        self.buf.clear();
        let _ = write!(
            self.buf,
            r#"{{"event":"start","sequenceNumber":"{seq}","start":{{"accountSid":{},"streamSid":{},"callSid":{},"tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{}}},"streamSid":{}}}"#,
            self.account_sid,
            self.stream_sid,
            json_string(call_sid),
            serde_json::Value::Object(params),
            self.stream_sid,
        );
        &self.buf
    }

    /// `media`: the caller's frame number `chunk` (from 1), captured `timestamp_ms` after the
    /// stream started, with its µ-law already in base64.
    pub fn media(&mut self, chunk: u64, timestamp_ms: u64, payload_base64: &str) -> &str {
        let seq = self.next_seq();
        self.buf.clear();
        let _ = write!(
            self.buf,
            r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{timestamp_ms}","payload":"{payload_base64}"}},"streamSid":{}}}"#,
            self.stream_sid,
        );
        &self.buf
    }

    /// `mark`: the echo of a mark the server sent, once the audio before it has played.
    pub fn mark(&mut self, name: &str) -> &str {
        let seq = self.next_seq();
        self.buf.clear();
        let _ = write!(
            self.buf,
            r#"{{"event":"mark","sequenceNumber":"{seq}","streamSid":{},"mark":{{"name":{}}}}}"#,
            self.stream_sid,
            json_string(name),
        );
        &self.buf
    }

    /// `dtmf`: a key the caller pressed.
    pub fn dtmf(&mut self, digit: char) -> &str {
        let seq = self.next_seq();
        self.buf.clear();
        let mut key = [0; 4];
        let _ = write!(
            self.buf,
            r#"{{"event":"dtmf","streamSid":{},"sequenceNumber":"{seq}","dtmf":{{"track":"inbound_track","digit":{}}}}}"#,
            self.stream_sid,
            json_string(digit.encode_utf8(&mut key)),
        );
        &self.buf
    }

    /// `stop`: the caller hung up.
    pub fn stop(&mut self, call_sid: &str) -> &str {
        let seq = self.next_seq();
        self.buf.clear();
        let _ = write!(
            self.buf,
            r#"{{"event":"stop","sequenceNumber":"{seq}","stop":{{"accountSid":{},"callSid":{}}},"streamSid":{}}}"#,
            self.account_sid,
            json_string(call_sid),
            self.stream_sid,
        );
        &self.buf
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }
}

/// `s` as a JSON string literal, quoted and escaped.
fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A message Twilio accepts on a bidirectional stream.
#[derive(Debug, Eq, PartialEq)]
pub enum ToTwilio<'a> {
    /// `media`: audio to play, base64 µ-law (not yet decoded).
    Media {
        /// The stream it is for.
        stream_sid: Cow<'a, str>,
        /// `media.payload`.
        payload: Cow<'a, str>,
    },
    /// `mark`: to be echoed once the audio queued before it has played.
    Mark {
        /// The stream it is for.
        stream_sid: Cow<'a, str>,
        /// `mark.name`.
        name: Cow<'a, str>,
    },
    /// `clear`: drop the audio queued and echo the pending marks.
    Clear {
        /// The stream it is for.
        stream_sid: Cow<'a, str>,
    },
}

impl ToTwilio<'_> {
    /// The stream the message is for.
    pub fn stream_sid(&self) -> &str {
        match self {
            Self::Media { stream_sid, .. }
            | Self::Mark { stream_sid, .. }
            | Self::Clear { stream_sid } => stream_sid,
        }
    }
}

/// Why a message to Twilio is not one it accepts.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ToTwilioError {
    /// Not JSON, a field Twilio does not document, or a documented one missing or mistyped.
    #[error("not a documented shape")]
    Shape,
    /// An event other than `media`, `mark` and `clear`, or one with another event's body.
    #[error("unknown message")]
    Unknown,
}

/// Reads a message meant for Twilio; any field beyond the documented ones makes it malformed.
pub fn parse_to_twilio(text: &str) -> Result<ToTwilio<'_>, ToTwilioError> {
    let msg = serde_json::from_str::<Strict<'_>>(text).map_err(|_| ToTwilioError::Shape)?;
    let stream_sid = msg.stream_sid.ok_or(ToTwilioError::Shape)?;
    match (msg.event.as_ref(), msg.media, msg.mark) {
        ("media", Some(media), None) => Ok(ToTwilio::Media {
            stream_sid,
            payload: media.payload,
        }),
        ("mark", None, Some(mark)) => Ok(ToTwilio::Mark {
            stream_sid,
            name: mark.name,
        }),
        ("clear", None, None) => Ok(ToTwilio::Clear { stream_sid }),
        _ => Err(ToTwilioError::Unknown),
    }
}

/// A message to Twilio, borrowed from its text; any field not listed here makes it malformed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(rename = "streamSid", borrow)]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    media: Option<StrictMedia<'a>>,
    #[serde(borrow)]
    mark: Option<StrictMark<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictMedia<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictMark<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use handset_engine::MulawFrame;

    use super::super::tests::{ACCOUNT, CALL, SID};
    use super::super::{Inbound, Writer, parse};
    use super::*;

    #[test]
    fn what_twilio_writes_is_what_the_server_reads() {
        let mut w = TwilioWriter::new(SID, ACCOUNT);
        assert_eq!(
            parse(w.connected()).unwrap(),
            Inbound::Connected {
                protocol: "Call".into()
            }
        );
        let Inbound::Start(start) = parse(w.start(CALL, [("token", "t\"1"), ("k", "v")])).unwrap()
        else {
            panic!("not a start");
        };
        assert_eq!(
            (start.call_sid.as_str(), start.stream_sid.as_str()),
            (CALL, SID)
        );
        assert_eq!(start.account_sid, ACCOUNT);
        assert_eq!(start.tracks, ["inbound"]);
        assert_eq!(start.custom_parameters["token"], "t\"1");
        assert_eq!(start.custom_parameters["k"], "v");

        let frame = [0x55u8; 160];
        let payload = STANDARD.encode(frame);
        let Inbound::Media { stream_sid, media } = parse(w.media(3, 40, &payload)).unwrap() else {
            panic!("not media");
        };
        assert_eq!(stream_sid, SID);
        assert_eq!((media.chunk, media.timestamp_ms), (3, 40));
        assert_eq!(media.payload.as_bytes(), &frame);

        assert_eq!(
            parse(w.mark("a \"b\"\n")).unwrap(),
            Inbound::Mark {
                stream_sid: SID.into(),
                name: "a \"b\"\n".into()
            }
        );
        assert_eq!(
            parse(w.dtmf('#')).unwrap(),
            Inbound::Dtmf {
                stream_sid: SID.into(),
                digit: '#'
            }
        );
        assert_eq!(
            parse(w.stop(CALL)).unwrap(),
            Inbound::Stop {
                stream_sid: SID.into()
            }
        );
    }

    #[test]
    fn messages_are_numbered_from_one_as_twilio_numbers_them() {
        let mut w = TwilioWriter::new(SID, ACCOUNT);
        let seq = |text: &str| -> String {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            v["sequenceNumber"].as_str().unwrap().to_owned()
        };
        assert_eq!(seq(w.start(CALL, [])), "1");
        assert_eq!(seq(w.media(1, 0, "")), "2");
        assert_eq!(seq(w.mark("m")), "3");
        assert_eq!(seq(w.dtmf('1')), "4");
        assert_eq!(seq(w.stop(CALL)), "5");
    }

    #[test]
    fn what_the_server_writes_is_what_twilio_accepts() {
        let mut w = Writer::new(SID);
        let frame = MulawFrame([0x7f; 160]);
        let media = w.media(&frame);
        let ToTwilio::Media {
            stream_sid,
            payload,
        } = parse_to_twilio(std::str::from_utf8(&media).unwrap()).unwrap()
        else {
            panic!("not media");
        };
        assert_eq!(stream_sid, SID);
        assert_eq!(STANDARD.decode(payload.as_bytes()).unwrap(), [0x7f; 160]);
        for name in ["m-1_a", "p\"1\\x"] {
            let mark = w.mark(name);
            assert_eq!(
                parse_to_twilio(std::str::from_utf8(&mark).unwrap()).unwrap(),
                ToTwilio::Mark {
                    stream_sid: SID.into(),
                    name: name.into()
                }
            );
        }
        let clear = w.clear();
        let clear = parse_to_twilio(std::str::from_utf8(&clear).unwrap()).unwrap();
        assert_eq!(clear.stream_sid(), SID);
        assert_eq!(
            clear,
            ToTwilio::Clear {
                stream_sid: SID.into()
            }
        );
    }

    #[test]
    fn twilio_refuses_any_other_shape() {
        for (text, err) in [
            ("not json", ToTwilioError::Shape),
            (r#"{"event":"clear"}"#, ToTwilioError::Shape),
            (
                r#"{"event":"clear","streamSid":"MZ1","extra":1}"#,
                ToTwilioError::Shape,
            ),
            (
                r#"{"event":"media","streamSid":"MZ1","media":{"payload":"","track":"outbound"}}"#,
                ToTwilioError::Shape,
            ),
            (
                r#"{"event":"clear","streamSid":"MZ1","streamSid":"MZ1"}"#,
                ToTwilioError::Shape,
            ),
            (
                r#"{"event":"media","streamSid":"MZ1","mark":{"name":"x"}}"#,
                ToTwilioError::Unknown,
            ),
            (
                r#"{"event":"mark","streamSid":"MZ1"}"#,
                ToTwilioError::Unknown,
            ),
            (
                r#"{"event":"stop","streamSid":"MZ1"}"#,
                ToTwilioError::Unknown,
            ),
        ] {
            assert_eq!(parse_to_twilio(text), Err(err), "{text}");
        }
    }
}
