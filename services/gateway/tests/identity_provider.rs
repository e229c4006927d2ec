//! Tokens from the marketplace's identity provider: RS256, ES256 and EdDSA tokens, signed with
//! real keys made fresh by each test, verified against a JWKS served by a real HTTP server in the
//! test (rotated, and taken away) or against a PEM file of public keys; issuer and audience
//! checked when configured; `alg: none`, unconfigured algorithms and the algorithm-confusion
//! token refused.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use chrono::Utc;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use parking_lot::Mutex;
use parley_gateway::AuthConfig;
use parley_test_support::sio::{Client, Error};
use parley_test_support::stack::{Service, Spec, TestStack};
use parley_test_support::{TEST_JWT_SECRET, http};
use rsa::pkcs1::EncodeRsaPrivateKey;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A signing key of the identity provider: its private half signs tokens, its public half is
/// published (as a JWK with `kid`, and as PEM).
struct SigningKey {
    algorithm: Algorithm,
    kid: String,
    private: EncodingKey,
    public_pem: String,
}

impl SigningKey {
    fn rsa() -> Self {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let private = EncodingKey::from_rsa_pem(key.to_pkcs1_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let public_pem = key.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        Self::new(Algorithm::RS256, private, public_pem)
    }

    fn p256() -> Self {
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let private = EncodingKey::from_ec_pem(key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let public_pem = key.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        Self::new(Algorithm::ES256, private, public_pem)
    }

    fn ed25519() -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let private = EncodingKey::from_ed_pem(key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let public_pem = key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        Self::new(Algorithm::EdDSA, private, public_pem)
    }

    fn new(algorithm: Algorithm, private: EncodingKey, public_pem: String) -> Self {
        Self {
            algorithm,
            kid: format!("key-{}", Uuid::new_v4().simple()),
            private,
            public_pem,
        }
    }

    /// The public JWK, as a provider publishes it (`kid`, `alg`, `use: sig`).
    fn jwk(&self) -> Value {
        let public = self.public_pem.as_bytes();
        let decoding = match self.algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(public),
            Algorithm::ES256 => DecodingKey::from_ec_pem(public),
            _ => DecodingKey::from_ed_pem(public),
        };
        let mut jwk = Jwk::from_decoding_key(&decoding.unwrap(), Some(self.algorithm)).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let value = serde_json::to_value(&jwk).unwrap();
        assert!(
            value.get("d").is_none(),
            "a published JWK holds no private part: {value}"
        );
        value
    }

    /// A token for `user` with `claims` added, its header naming this key's `kid`.
    fn token(&self, user: Uuid, claims: &Value) -> String {
        self.token_with_kid(user, claims, Some(&self.kid))
    }

    fn token_with_kid(&self, user: Uuid, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(str::to_owned);
        encode(&header, &with_basics(user, claims), &self.private).unwrap()
    }
}

/// `sub` and an `exp` an hour away, plus `claims`.
fn with_basics(user: Uuid, claims: &Value) -> Value {
    let mut all = json!({ "sub": user, "exp": Utc::now().timestamp() + 3600 });
    for (name, value) in claims.as_object().unwrap() {
        all[name] = value.clone();
    }
    all
}

fn hs256(secret: &[u8], user: Uuid, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &with_basics(user, claims),
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A JWKS served over HTTP on port 0 by a real axum server, as an identity provider serves it:
/// its keys can be rotated, its fetches are counted, and it can go away.
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    last_fetch: Arc<Mutex<Option<tokio::time::Instant>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: &[&SigningKey]) -> Self {
        let document = Arc::new(Mutex::new(Value::Null));
        let fetches = Arc::new(AtomicUsize::new(0));
        let last_fetch = Arc::new(Mutex::new(None));
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            get({
                let document = document.clone();
                let fetches = fetches.clone();
                let last_fetch = last_fetch.clone();
                move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    *last_fetch.lock() = Some(tokio::time::Instant::now());
                    Json(document.lock().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .unwrap();
            }
        });
        let server = Self {
            addr,
            keys: document,
            fetches,
            last_fetch,
            stop,
            task,
        };
        server.publish(keys);
        server
    }

    fn url(&self) -> reqwest::Url {
        format!("http://{}/.well-known/jwks.json", self.addr).parse().unwrap()
    }

    /// Serves exactly `keys` from now on.
    fn publish(&self, keys: &[&SigningKey]) {
        let set = json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() });
        // The document parses as the JWKS it is meant to be.
        let parsed: JwkSet = serde_json::from_value(set.clone()).unwrap();
        assert_eq!(parsed.keys.len(), keys.len());
        *self.keys.lock() = set;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// When the latest fetch arrived.
    fn last_fetch(&self) -> tokio::time::Instant {
        self.last_fetch.lock().expect("fetched at least once")
    }

    /// Stops serving and closes the port.
    async fn go_away(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// Whether a socket connects with `token`; a refusal must be `unauthorized`.
async fn socket_accepts(gateway: &Service, token: &str) -> bool {
    match Client::connect(&gateway.url(), json!({ "token": token })).await {
        Ok(_) => true,
        Err(Error::ConnectRefused(message)) => {
            assert_eq!(message, "unauthorized");
            false
        }
        Err(other) => panic!("neither connected nor refused: {other:?}"),
    }
}

/// Whether `GET /v1/conversations` answers 200 for `token`; else it must be 401 `unauthorized`.
async fn http_accepts(gateway: &Service, token: &str) -> bool {
    let response = http::get(gateway.addr, "/v1/conversations", token).await;
    match response.status {
        200 => true,
        401 => {
            assert_eq!(response.body["error"]["code"], "unauthorized", "{}", response.raw);
            false
        }
        other => panic!("answered {other}: {}", response.raw),
    }
}

/// Accepted (or refused) over both transports alike.
async fn accepted(gateway: &Service, token: &str) -> bool {
    let socket = socket_accepts(gateway, token).await;
    let http = http_accepts(gateway, token).await;
    assert_eq!(socket, http, "the socket and HTTP agree on a token");
    socket
}

/// The unsigned token of `claims`: `alg: none`.
fn unsigned(user: Uuid, claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&with_basics(user, claims))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_eddsa_tokens_from_a_jwks_are_accepted_and_wrong_issuers_audiences_and_algorithms_are_not() {
    let (rsa, ec, ed) = (SigningKey::rsa(), SigningKey::p256(), SigningKey::ed25519());
    let jwks = JwksServer::start(&[&rsa, &ec, &ed]).await;
    let stack = TestStack::builder().build().await;
    let mut auth = AuthConfig::jwks(jwks.url());
    auth.issuer = Some("https://id.example.test/".into());
    auth.audience = Some("parley".into());
    let gateway = stack.start(Spec::gateway().auth(auth)).await;
    let user = Uuid::new_v4();
    let good = json!({ "iss": "https://id.example.test/", "aud": "parley" });

    for key in [&rsa, &ec, &ed] {
        assert!(accepted(&gateway, &key.token(user, &good)).await, "{:?}", key.algorithm);
        // A list of audiences holding ours is fine; without a `kid` every key of the family is
        // tried.
        let listed = json!({ "iss": "https://id.example.test/", "aud": ["other", "parley"] });
        assert!(
            accepted(&gateway, &key.token(user, &listed)).await,
            "{:?}",
            key.algorithm
        );
        assert!(
            accepted(&gateway, &key.token_with_kid(user, &good, None)).await,
            "{:?}",
            key.algorithm
        );
    }
    let refused = [
        (
            "wrong issuer",
            rsa.token(user, &json!({ "iss": "https://evil.test/", "aud": "parley" })),
        ),
        ("no issuer", ec.token(user, &json!({ "aud": "parley" }))),
        (
            "wrong audience",
            ed.token(user, &json!({ "iss": "https://id.example.test/", "aud": "other" })),
        ),
        (
            "no audience",
            rsa.token(user, &json!({ "iss": "https://id.example.test/" })),
        ),
        ("alg none", unsigned(user, &good)),
        (
            "HS256, which is not configured",
            hs256(TEST_JWT_SECRET.as_bytes(), user, &good),
        ),
        (
            "HS256 made with the RSA public key's PEM as its secret",
            hs256(rsa.public_pem.as_bytes(), user, &good),
        ),
        (
            "an ES256 token naming the RSA key's kid",
            ec.token_with_kid(user, &good, Some(&rsa.kid)),
        ),
        (
            "signed by a key the provider never published",
            SigningKey::p256().token_with_kid(user, &good, Some(&ec.kid)),
        ),
        (
            "expired",
            rsa.token(
                user,
                &json!({ "iss": "https://id.example.test/", "aud": "parley", "exp": Utc::now().timestamp() - 5 }),
            ),
        ),
        (
            "sub not a UUID",
            rsa.token(
                user,
                &json!({ "iss": "https://id.example.test/", "aud": "parley", "sub": "alice" }),
            ),
        ),
    ];
    for (why, token) in refused {
        assert!(!accepted(&gateway, &token).await, "{why} is refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_jwks_rotates_a_new_kid_is_accepted_without_a_restart_and_a_retired_key_is_refused() {
    let (old, new) = (SigningKey::rsa(), SigningKey::ed25519());
    let jwks = JwksServer::start(&[&old]).await;
    let stack = TestStack::builder().build().await;
    let mut auth = AuthConfig::jwks(jwks.url());
    auth.jwks_min_refetch = Duration::from_millis(1);
    let gateway = stack.start(Spec::gateway().auth(auth)).await;
    let user = Uuid::new_v4();
    assert_eq!(jwks.fetches(), 1, "fetched once, at start");
    assert!(accepted(&gateway, &old.token(user, &json!({}))).await);
    assert_eq!(jwks.fetches(), 1, "a known kid needs no fetch");

    jwks.publish(&[&new]);
    assert!(
        accepted(&gateway, &new.token(user, &json!({}))).await,
        "the new key's token"
    );
    assert!(jwks.fetches() >= 2, "the unknown kid made the gateway fetch again");
    assert!(
        !accepted(&gateway, &old.token(user, &json!({}))).await,
        "the retired key's token is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_make_the_gateway_fetch_the_jwks_at_most_once_per_interval() {
    let (first, second) = (SigningKey::p256(), SigningKey::p256());
    let jwks = JwksServer::start(&[&first]).await;
    let stack = TestStack::builder().build().await;
    let interval = Duration::from_secs(2);
    let mut auth = AuthConfig::jwks(jwks.url());
    auth.jwks_min_refetch = interval;
    let gateway = stack.start(Spec::gateway().auth(auth)).await;
    let user = Uuid::new_v4();
    assert_eq!(jwks.fetches(), 1);
    // The gateway's clock for the interval started before this request arrived.
    let fetched = jwks.last_fetch();

    // Published, but the gateway fetched less than the interval ago: not fetched for this.
    jwks.publish(&[&first, &second]);
    assert!(
        fetched.elapsed() < interval,
        "the gateway took the whole interval to start"
    );
    assert!(!accepted(&gateway, &second.token(user, &json!({}))).await);
    assert_eq!(jwks.fetches(), 1);

    // The interval is the subject here: only its passing allows the next fetch.
    tokio::time::sleep_until(fetched + interval).await;
    assert!(accepted(&gateway, &second.token(user, &json!({}))).await);
    assert_eq!(jwks.fetches(), 2);

    // A burst of made-up kids right after costs the provider nothing more.
    let bogus = (0..20).map(|i| {
        let token = first.token_with_kid(user, &json!({}), Some(&format!("made-up-{i}")));
        let url = gateway.url();
        async move { Client::connect(&url, json!({ "token": token })).await.is_ok() }
    });
    let connected = futures::future::join_all(bogus).await;
    assert!(connected.iter().all(|ok| !ok), "made-up kids are refused");
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_keys_keep_working_while_the_jwks_server_is_away_and_the_failure_is_counted() {
    let key = SigningKey::rsa();
    let jwks = JwksServer::start(&[&key]).await;
    let stack = TestStack::builder().build().await;
    let mut auth = AuthConfig::jwks(jwks.url());
    auth.jwks_refresh = Duration::from_millis(100);
    auth.jwks_min_refetch = Duration::from_millis(1);
    let gateway = stack.start(Spec::gateway().auth(auth)).await;
    let user = Uuid::new_v4();
    assert!(accepted(&gateway, &key.token(user, &json!({}))).await);

    let failures = |text: &str| {
        text.lines()
            .find(|line| line.starts_with("parley_gateway_jwks_fetches_total{result=\"failed\"}"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let scrape = || async { http::request(gateway.addr, "GET", "/metrics", None, None).await.raw };
    let before = failures(&scrape().await);
    jwks.go_away().await;
    parley_test_support::eventually("a failed JWKS fetch to be counted", Duration::from_secs(15), || async {
        (failures(&scrape().await) > before).then_some(())
    })
    .await;

    assert!(
        accepted(&gateway, &key.token(user, &json!({}))).await,
        "the cached key still verifies"
    );
    let stranger = SigningKey::rsa();
    assert!(
        !accepted(&gateway, &stranger.token(user, &json!({}))).await,
        "an unknown kid is refused (its fetch fails at once)"
    );
}

/// A PEM file in a fresh temporary folder.
fn pem_file(contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("parley-keys-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("public-keys.pem");
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_verifies_with_a_pem_file_of_public_keys_beside_its_secret_and_refuses_the_confused_token() {
    let (rsa, ec, ed) = (SigningKey::rsa(), SigningKey::p256(), SigningKey::ed25519());
    let path = pem_file(&[&rsa, &ec, &ed].map(|key| key.public_pem.clone()).concat());
    let stack = TestStack::builder().build().await;
    // The stack gives the binary PARLEY_JWT_SECRET as well.
    let gateway = stack
        .start(
            Spec::gateway()
                .binary()
                .env("PARLEY_JWT_PUBLIC_KEYS", path.display().to_string())
                .env("PARLEY_JWT_ISSUER", "marketplace"),
        )
        .await;
    let user = Uuid::new_v4();
    let iss = json!({ "iss": "marketplace" });
    for key in [&rsa, &ec, &ed] {
        // A PEM key has no kid: the token's is not needed, and not held against it.
        assert!(accepted(&gateway, &key.token(user, &iss)).await, "{:?}", key.algorithm);
        assert!(
            accepted(&gateway, &key.token_with_kid(user, &iss, None)).await,
            "{:?}",
            key.algorithm
        );
    }
    assert!(accepted(&gateway, &hs256(TEST_JWT_SECRET.as_bytes(), user, &iss)).await);
    assert!(
        !accepted(&gateway, &hs256(rsa.public_pem.as_bytes(), user, &iss)).await,
        "HS256 signed with the RSA public key's PEM is refused"
    );
    assert!(!accepted(&gateway, &unsigned(user, &iss)).await, "alg none");
    assert!(
        !accepted(&gateway, &SigningKey::ed25519().token(user, &iss)).await,
        "a key not in the file"
    );
    assert!(!accepted(&gateway, &rsa.token(user, &json!({}))).await, "no issuer");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Runs the gateway binary with `env` and no other token setting; its exit code and stderr.
fn start_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley-gateway"));
    for var in [
        "PARLEY_JWT_SECRET",
        "PARLEY_JWT_PUBLIC_KEYS",
        "PARLEY_JWKS_URL",
        "PARLEY_JWT_ISSUER",
        "PARLEY_JWT_AUDIENCE",
    ] {
        command.env_remove(var);
    }
    let output = command
        .envs(env.iter().copied())
        .env("PARLEY_TRANSCRIPT_KEY", parley_test_support::stack::TEST_TRANSCRIPT_KEY)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_gateway_refuses_to_start_without_a_usable_way_to_verify_tokens_in_one_line_naming_the_variable() {
    let private_key = {
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    };
    let private_file = pem_file(&private_key);
    let cases = [
        (vec![], "PARLEY_JWT_SECRET"),
        (vec![("PARLEY_JWKS_URL", "not a url")], "PARLEY_JWKS_URL"),
        (
            vec![("PARLEY_JWKS_URL", "ftp://id.example.test/keys")],
            "PARLEY_JWKS_URL",
        ),
        (
            vec![("PARLEY_JWT_PUBLIC_KEYS", "/nonexistent/parley/keys.pem")],
            "PARLEY_JWT_PUBLIC_KEYS",
        ),
        (
            vec![("PARLEY_JWT_PUBLIC_KEYS", private_file.to_str().unwrap())],
            "PARLEY_JWT_PUBLIC_KEYS",
        ),
    ];
    for (env, named) in cases {
        let (code, stderr) = start_with(&env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(named), "{env:?}: {stderr}");
    }
    assert!(
        start_with(&[("PARLEY_JWT_PUBLIC_KEYS", private_file.to_str().unwrap())])
            .1
            .contains("not a public key"),
        "a private key is named as such"
    );
    std::fs::remove_dir_all(private_file.parent().unwrap()).unwrap();
}
