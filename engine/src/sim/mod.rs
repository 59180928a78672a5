//! Sans-IO models of Twilio's side of a Media Stream, for the virtual-time tests, the
//! end-to-end tests and `handset sim`. Not part of the media path.

mod playback;

pub use playback::{MarkEcho, PlaybackModel, PlaybackStats, PlayedAudio};
