//! The HTTP API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the types they read and answer, so it cannot drift from the code. The gateway
//! serves it at `GET /v1/openapi.json`; docs/openapi.json is the same text, committed for tools
//! that read the repository (a test keeps the two equal).

use std::sync::LazyLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;
use crate::error::{ErrorBody, ErrorObject};
use crate::http;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Parley",
        description = "Project messaging for a freelance marketplace: the HTTP API of the gateway. \
                       Real-time events (Socket.IO) and the NATS subjects are in docs/asyncapi.yaml.",
        license(name = "MIT", identifier = "MIT")
    ),
    paths(
        http::list_conversations,
        http::get_conversation,
        http::history,
        http::send_message,
        http::mark_read,
        http::transcript,
        http::checkpoint,
        http::transcript_keys,
        http::openapi,
        http::healthz,
        http::ready,
        http::metrics,
    ),
    components(schemas(ErrorBody, ErrorObject, api::EntryKind)),
    modifiers(&BearerToken, &OptionalReadBody),
    tags(
        (name = "conversations", description = "The caller's conversations"),
        (name = "messages", description = "History, sends and read marks"),
        (name = "transcripts", description = "Tamper-evident transcripts and their signing keys"),
        (name = "operations", description = "Probes, metrics and this document; no token needed"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme: a JWT in `Authorization: Bearer <token>`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 with PARLEY_JWT_SECRET, or RS256, ES256 or EdDSA from the identity provider; \
                         `sub` is the user's UUID, `exp` is required",
                    ))
                    .build(),
            ),
        );
    }
}

/// `POST /v1/conversations/{id}/read` also takes no body at all (marking everything read), which
/// utoipa's `request_body` cannot say.
struct OptionalReadBody;

impl Modify for OptionalReadBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let body = openapi
            .paths
            .paths
            .get_mut("/v1/conversations/{id}/read")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut());
        if let Some(body) = body {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// The document as served and committed: pretty JSON and a final newline.
pub fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        text.push('\n');
        text
    });
    &DOCUMENT
}
