//! The Socket.IO rooms the gateway delivers through. Every socket of a user joins `user:<id>`, so
//! one emit reaches all their devices (fan-out, read receipts); a socket that joined a
//! conversation is in `conv:<id>` and gets its typing signals.

use uuid::Uuid;

/// The room every socket of `user` joins, so that one emit reaches all their devices.
pub(crate) fn user_room(user: Uuid) -> String {
    room_name("user:", user)
}

/// The room of the sockets that joined a conversation: they get its typing signals.
pub(crate) fn conversation_room(conversation: Uuid) -> String {
    room_name("conv:", conversation)
}

/// `<prefix><id>` in one allocation of its exact size, where `format!` takes two: the fan-out
/// names two rooms for every message it delivers.
fn room_name(prefix: &str, id: Uuid) -> String {
    let mut name = String::with_capacity(prefix.len() + uuid::fmt::Hyphenated::LENGTH);
    name.push_str(prefix);
    name.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_the_prefix_and_the_lowercase_hyphenated_id() {
        let id = Uuid::new_v4();
        assert_eq!(user_room(id), format!("user:{id}"));
        assert_eq!(conversation_room(id), format!("conv:{id}"));
    }
}
