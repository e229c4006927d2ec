//! Deterministic identifiers. A conversation's id follows from its project's and a retried send's
//! message id follows from (sender, conversation, clientMsgId), so that repeating an event or a
//! request maps onto the same row and the same JetStream `Nats-Msg-Id` instead of a new one.

use uuid::Uuid;

/// Namespace for Parley's name-based (v5) UUIDs.
const PARLEY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2f4e_8a1d_4d8b_9c55_2b7e_0a3d_91c4);

/// The id of the one conversation a project has.
pub fn conversation_id_for_project(project_id: Uuid) -> Uuid {
    let mut name = b"conversation:".to_vec();
    name.extend_from_slice(project_id.as_bytes());
    Uuid::new_v5(&PARLEY_NAMESPACE, &name)
}

/// The id of a message sent with a `clientMsgId`: the same for every retry of that send.
pub fn message_id_for_client_msg(sender_id: Uuid, conversation_id: Uuid, client_msg_id: &str) -> Uuid {
    let mut name = b"message:".to_vec();
    name.extend_from_slice(sender_id.as_bytes());
    name.extend_from_slice(conversation_id.as_bytes());
    name.extend_from_slice(client_msg_id.as_bytes());
    Uuid::new_v5(&PARLEY_NAMESPACE, &name)
}

/// The id of the notification of `message_id` for `recipient_id`: the same on every redelivery.
pub fn notification_id(message_id: Uuid, recipient_id: Uuid) -> Uuid {
    let mut name = b"notification:".to_vec();
    name.extend_from_slice(message_id.as_bytes());
    name.extend_from_slice(recipient_id.as_bytes());
    Uuid::new_v5(&PARLEY_NAMESPACE, &name)
}

/// The id of a message sent without a `clientMsgId`: time-ordered, unique.
pub fn new_message_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_project_always_maps_to_the_same_conversation() {
        let project = Uuid::new_v4();
        assert_eq!(
            conversation_id_for_project(project),
            conversation_id_for_project(project)
        );
        assert_ne!(
            conversation_id_for_project(project),
            conversation_id_for_project(Uuid::new_v4())
        );
    }

    #[test]
    fn client_message_ids_are_scoped_by_sender_and_conversation() {
        let (a, b, conv) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let first = message_id_for_client_msg(a, conv, "x1");
        assert_eq!(first, message_id_for_client_msg(a, conv, "x1"));
        assert_ne!(first, message_id_for_client_msg(b, conv, "x1"));
        assert_ne!(first, message_id_for_client_msg(a, Uuid::new_v4(), "x1"));
        assert_ne!(first, message_id_for_client_msg(a, conv, "x2"));
    }
}
