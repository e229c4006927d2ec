//! What a socket follows. Joining a conversation checks membership, puts the socket in the
//! conversation's room (typing signals) and replays what it missed; leaving takes it out and ends
//! its typing there; typing is signalled only by a participant. A socket that joined was checked
//! then, so its later leave and typing skip the membership lookup.

use socketioxide::extract::SocketRef;
use uuid::Uuid;

use crate::AppState;
use crate::api::JoinReply;
use crate::error::ApiError;
use crate::replay::{self, Replays};
use crate::rooms::conversation_room;
use crate::session::SocketSession;

/// `not_found` unless the socket's user is a participant.
async fn ensure_member(state: &AppState, session: &SocketSession, conversation: Uuid) -> Result<(), ApiError> {
    if !session.has_joined(conversation) {
        state.messaging.access(session.user, conversation).await?;
    }
    Ok(())
}

/// Joins `conversation` and replays every message after `last_seq`, or after the caller's read
/// mark as of their last acknowledged `markRead` when the client gave none.
pub(crate) async fn join(
    state: &AppState,
    socket: &SocketRef,
    session: &SocketSession,
    replays: &Replays,
    conversation: Uuid,
    last_seq: Option<i64>,
) -> Result<JoinReply, ApiError> {
    let user = session.user;
    state.messaging.access(user, conversation).await?;
    socket.join(conversation_room(conversation));
    session.joined(conversation);
    let _one_join_at_a_time = replays.one_at_a_time().await;
    let after_seq = match last_seq {
        Some(seq) => seq,
        None => state.messaging.read_mark(user, conversation).await?,
    };
    // The conversation as the ack shows it is read while the replay runs: its two queries need
    // not wait for the replay, nor the replay for them.
    let (outcome, details) = tokio::join!(
        replay::replay(&state.messaging, socket, session, replays, conversation, after_seq),
        state.messaging.conversation(user, conversation)
    );
    let (outcome, conversation) = (outcome?, details?);
    Ok(JoinReply {
        conversation,
        replayed: outcome.replayed,
        complete: outcome.complete,
    })
}

/// Leaves `conversation`'s room and ends the socket's typing there.
pub(crate) async fn leave(
    state: &AppState,
    socket: &SocketRef,
    session: &SocketSession,
    conversation: Uuid,
) -> Result<(), ApiError> {
    ensure_member(state, session, conversation).await?;
    socket.leave(conversation_room(conversation));
    session.left(conversation);
    if session.stop_typing(conversation) {
        state.typing.signal(session.user.0, conversation, false).await?;
    }
    Ok(())
}

/// Signals the socket's typing in `conversation`.
pub(crate) async fn typing(
    state: &AppState,
    session: &SocketSession,
    conversation: Uuid,
    is_typing: bool,
) -> Result<(), ApiError> {
    ensure_member(state, session, conversation).await?;
    if is_typing {
        session.start_typing(conversation);
    } else {
        session.stop_typing(conversation);
    }
    state.typing.signal(session.user.0, conversation, is_typing).await
}

/// A disconnected socket's typing ends everywhere it was typing.
pub(crate) async fn disconnected(state: &AppState, session: &SocketSession) {
    for conversation in session.take_all_typing() {
        let _ = state.typing.signal(session.user.0, conversation, false).await;
    }
}
