//! Marks on the wire: each mark id's name (`p<n>` for the call's progress marks, `a<n>` for
//! the agent's), written without allocating and read back from Twilio's echo, and the
//! writer's watch on echoes that stop coming.

use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

use handset_engine::MarkId;
use handset_engine::call::PROGRESS_MARK_BASE;

/// Wire name of a mark id, held on the stack: `p<n>` for the call's progress marks, `a<n>` for
/// agent marks. The socket writer copies it straight into the `mark` message.
#[derive(Clone, Copy)]
pub struct MarkName {
    /// `p` or `a`, then up to 20 digits (`u64::MAX` has 20).
    bytes: [u8; 21],
    len: u8,
}

impl MarkName {
    /// The wire name of `id`.
    pub fn of(id: MarkId) -> Self {
        let (kind, n) = if id.0 >= PROGRESS_MARK_BASE {
            (b'p', id.0 - PROGRESS_MARK_BASE)
        } else {
            (b'a', id.0)
        };
        let mut bytes = [0u8; 21];
        bytes[0] = kind;
        let mut digits = &mut bytes[1..];
        // 20 bytes hold every u64, so the write cannot fail.
        let _ = write!(digits, "{n}");
        let len = 21 - digits.len() as u8;
        Self { bytes, len }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters and digits are ever written.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for MarkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mark id of a wire name written by [`MarkName`].
pub fn parse_mark_name(name: &str) -> Option<MarkId> {
    let (kind, digits) = name.split_at_checked(1)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 18 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match kind {
        "p" => Some(MarkId(PROGRESS_MARK_BASE + n)),
        "a" if n < PROGRESS_MARK_BASE => Some(MarkId(n)),
        _ => None,
    }
}

/// The writer's view of the peer's mark echoes: whether marks it wrote have gone unechoed
/// for too long, from a peer that has shown it echoes them.
///
/// A peer that stops reading is seen by the server's socket only once every kernel buffer
/// between the two is full, and the peer's receive buffer is the peer's: a Linux receiver
/// that was reading fast has autotuned it to megabytes, minutes of audio. Twilio echoes every
/// mark once the audio before it has played, and the engine sends one every 100 ms of
/// playback, so echoes that stop while marks go out say the peer stopped reading, whatever
/// the buffers hold. A peer that never echoed a mark (a client that ignores marks) is judged
/// by the write deadline alone.
#[derive(Debug, Default)]
pub(super) struct MarkWatch {
    /// Marks written.
    pub(super) written: u64,
    /// Echoes seen, as of the last check.
    pub(super) echoed: u64,
    /// Since when a written mark has waited with no echo arriving.
    pub(super) since: Option<Instant>,
}

impl MarkWatch {
    /// A mark was written at `at`.
    pub(super) fn wrote(&mut self, at: Instant) {
        if self.written <= self.echoed {
            self.since = Some(at);
        }
        self.written += 1;
    }

    /// Takes the reader's echo count at `now`; returns how long marks have waited unechoed
    /// when that is over `limit` from a peer that echoes marks.
    pub(super) fn overdue(
        &mut self,
        echoed: u64,
        now: Instant,
        limit: Duration,
    ) -> Option<Duration> {
        if echoed != self.echoed {
            self.echoed = echoed;
            self.since = (self.written > echoed).then_some(now);
        }
        let waited = now.saturating_duration_since(self.since?);
        (self.echoed > 0 && waited > limit).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks unechoed past the limit are overdue only from a peer that has echoed before; an
    /// echo, or every mark echoed, resets the wait.
    #[test]
    fn mark_echoes_that_stop_make_the_peer_overdue() {
        let t0 = crate::clock::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let limit = Duration::from_secs(7);
        // A peer that never echoes is never judged by marks.
        let mut silent = MarkWatch::default();
        for i in 0..200 {
            silent.wrote(at(i * 100));
        }
        assert_eq!(silent.overdue(0, at(60_000), limit), None);
        // A peer that echoes: fine while echoes come, overdue once they stop.
        let mut watch = MarkWatch::default();
        watch.wrote(at(0));
        watch.wrote(at(100));
        assert_eq!(watch.overdue(1, at(150), limit), None);
        assert_eq!(watch.overdue(2, at(250), limit), None);
        // Nothing outstanding: no wait, however long the silence.
        assert_eq!(watch.overdue(2, at(60_000), limit), None);
        watch.wrote(at(60_000));
        watch.wrote(at(60_100));
        assert_eq!(watch.overdue(2, at(67_000), limit), None);
        assert_eq!(
            watch.overdue(2, at(67_001), limit),
            Some(Duration::from_millis(7_001))
        );
        // A late echo restarts the wait from when it was seen.
        assert_eq!(watch.overdue(3, at(67_100), limit), None);
        assert_eq!(watch.overdue(3, at(74_000), limit), None);
        assert!(watch.overdue(3, at(74_101), limit).is_some());
    }

    #[test]
    fn mark_names_are_the_kind_and_the_decimal_number() {
        assert_eq!(MarkName::of(MarkId(0)).as_str(), "a0");
        assert_eq!(MarkName::of(MarkId(7)).as_str(), "a7");
        assert_eq!(MarkName::of(MarkId(PROGRESS_MARK_BASE)).as_str(), "p0");
        assert_eq!(
            MarkName::of(MarkId(PROGRESS_MARK_BASE + 1_234_567)).to_string(),
            "p1234567"
        );
        assert_eq!(
            MarkName::of(MarkId(u64::MAX)).as_str(),
            format!("p{}", u64::MAX - PROGRESS_MARK_BASE)
        );
    }

    #[test]
    fn mark_names_round_trip() {
        for id in [
            MarkId(0),
            MarkId(7),
            MarkId(PROGRESS_MARK_BASE),
            MarkId(PROGRESS_MARK_BASE + 99),
        ] {
            assert_eq!(parse_mark_name(MarkName::of(id).as_str()), Some(id));
        }
        for bad in ["", "p", "x1", "p-1", "a99999999999999999999", "p1 ", "a1.5"] {
            assert_eq!(parse_mark_name(bad), None, "{bad:?}");
        }
    }
}
