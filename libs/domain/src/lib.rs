//! Parley's vocabulary: the objects clients see, the rules every write obeys, and the error codes
//! that name each refusal. Shared by every process so that the gateway, the workers and the tests
//! agree on one definition of "a valid message" and one JSON shape per object.

pub mod error;
pub mod ids;
pub mod model;
pub mod validation;

pub use error::ErrorCode;
pub use model::{Conversation, ConversationStatus, LastMessage, Message, Participant, Role, TranscriptSummary};
