//! Who is calling (SPEC.md section 5).
//!
//! The auth service keeps the user in a cookie-session cookie: `session` (cookie-session 2.x) or
//! `express:sess` (1.x), whose value is the standard base64 of `{"jwt":"<token>"}`. The token is
//! an HS256 JWT signed with `JWT_KEY` holding `{id, email, iat}`. API clients may instead send
//! `Authorization: Bearer <token>`. Anything missing, undecodable, expired or signed otherwise
//! (including `alg: none`) means "no user".

use std::fmt;

use axum::extract::{FromRef, FromRequestParts};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::ApiError;

/// Cookie names, newest cookie-session first.
pub const COOKIE_NAMES: [&str; 2] = ["session", "express:sess"];

/// Standard alphabet; padding optional, since some clients strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The signed-in user, as the auth service puts it in the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPayload {
    pub id: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// The shared `JWT_KEY`. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct JwtKey {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKey(<redacted>)")
    }
}

impl JwtKey {
    /// A key from the secret's bytes.
    pub fn new(secret: &[u8]) -> Self {
        JwtKey {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
        }
    }

    /// The user in `token` if it is an HS256 JWT signed with this key and not expired.
    pub fn verify(&self, token: &str) -> Option<UserPayload> {
        let mut validation = Validation::new(Algorithm::HS256);
        // The auth service sets no `exp`; honour it when present.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.leeway = 0;
        validation.validate_aud = false;
        match jsonwebtoken::decode::<UserPayload>(token, &self.decoding, &validation) {
            Ok(data) => Some(data.claims),
            Err(e) => {
                tracing::debug!(error = %e, "rejected token");
                None
            }
        }
    }

    /// Signs `user` as the auth service does (HS256). For tests, demos and tools.
    pub fn sign(&self, user: &UserPayload) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), user, &self.encoding)
            .expect("HS256 signing of a plain struct cannot fail")
    }
}

/// The `Cookie` header value the auth service's cookie-session would set for `token`.
pub fn session_cookie(token: &str) -> String {
    let value = BASE64.encode(serde_json::json!({ "jwt": token }).to_string());
    format!("session={value}")
}

/// The user a request carries, from its session cookie or else its bearer token.
pub fn user_from_headers(headers: &HeaderMap, key: &JwtKey) -> Option<UserPayload> {
    let from_cookies = COOKIE_NAMES.iter().find_map(|name| {
        cookies(headers)
            .filter(|(cookie, _)| cookie == name)
            .find_map(|(_, value)| token_from_session(value).and_then(|token| key.verify(&token)))
    });
    from_cookies.or_else(|| {
        let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = authorization.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.verify(token.trim()))?
    })
}

/// Every `name=value` pair of every `Cookie` header.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
}

/// The token inside a session cookie value (base64 of `{"jwt": ...}`), tolerating a value that a
/// client percent-encoded.
fn token_from_session(value: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Session {
        jwt: String,
    }
    let decoded = BASE64
        .decode(value)
        .ok()
        .or_else(|| BASE64.decode(percent_decode(value)?).ok())?;
    serde_json::from_slice::<Session>(&decoded)
        .ok()
        .map(|session| session.jwt)
}

/// Decodes `%XX` escapes; `None` when there is nothing to decode or an escape is broken.
fn percent_decode(value: &str) -> Option<String> {
    if !value.contains('%') {
        return None;
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The signed-in user, if any. Never rejects.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Option<UserPayload>);

impl<S> FromRequestParts<S> for CurrentUser
where
    JwtKey: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = JwtKey::from_ref(state);
        Ok(CurrentUser(user_from_headers(&parts.headers, &key)))
    }
}

/// The signed-in user; rejects with 401 `Not authorized` when there is none.
#[derive(Debug, Clone)]
pub struct RequireAuth(pub UserPayload);

impl<S> FromRequestParts<S> for RequireAuth
where
    JwtKey: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state)
            .await
            .unwrap_or_else(|e| match e {});
        let user = user.ok_or(ApiError::NotAuthorized)?;
        // Lets the request span and access log name the user.
        tracing::Span::current().record("user_id", user.id.as_str());
        parts.extensions.insert(user.clone());
        Ok(RequireAuth(user))
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use http::{HeaderValue, Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const SECRET: &[u8] = b"asdf";

    fn user() -> UserPayload {
        UserPayload {
            id: "6745a1e9c2b1a4d5e6f70811".into(),
            email: "test@test.com".into(),
            iat: Some(1_764_000_000),
        }
    }

    fn headers(name: &'static str, value: String) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
        headers
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn accepts_the_session_cookie_under_both_names() {
        let key = JwtKey::new(SECRET);
        let cookie = session_cookie(&key.sign(&user()));
        assert!(cookie.starts_with("session="));
        assert_eq!(
            user_from_headers(&headers("cookie", cookie.clone()), &key),
            Some(user())
        );
        let legacy = cookie.replacen("session=", "express:sess=", 1);
        assert_eq!(
            user_from_headers(&headers("cookie", legacy), &key),
            Some(user())
        );
        let among_others = format!("theme=dark; {cookie}; lang=en");
        assert_eq!(
            user_from_headers(&headers("cookie", among_others), &key),
            Some(user())
        );
    }

    #[test]
    fn reads_a_cookie_built_by_node_cookie_session() {
        // Buffer.from(JSON.stringify({jwt})).toString('base64') for a token signed with "asdf".
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjY3NDVhMWU5YzJiMWE0ZDVlNmY3MDgxMSIsImVtYWlsIjoidGVzdEB0ZXN0LmNvbSIsImlhdCI6MTc2NDAwMDAwMH0";
        let key = JwtKey::new(SECRET);
        let signature = jsonwebtoken::crypto::sign(
            token.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        let jwt = format!("{token}.{signature}");
        let value =
            base64::engine::general_purpose::STANDARD.encode(format!(r#"{{"jwt":"{jwt}"}}"#));
        assert_eq!(
            user_from_headers(&headers("cookie", format!("session={value}")), &key),
            Some(user())
        );
        let percent_encoded = value.replace('=', "%3D");
        assert_eq!(
            user_from_headers(
                &headers("cookie", format!("session={percent_encoded}")),
                &key
            ),
            Some(user())
        );
    }

    #[test]
    fn accepts_a_bearer_token() {
        let key = JwtKey::new(SECRET);
        let bearer = format!("Bearer {}", key.sign(&user()));
        assert_eq!(
            user_from_headers(&headers("authorization", bearer), &key),
            Some(user())
        );
        let basic = "Basic dXNlcjpwYXNz".to_owned();
        assert_eq!(
            user_from_headers(&headers("authorization", basic), &key),
            None
        );
    }

    #[test]
    fn rejects_a_token_signed_with_another_key() {
        let forged = session_cookie(&JwtKey::new(b"not-the-key").sign(&user()));
        assert_eq!(
            user_from_headers(&headers("cookie", forged), &JwtKey::new(SECRET)),
            None
        );
    }

    #[test]
    fn rejects_alg_none_and_other_algorithms() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = b64.encode(serde_json::to_vec(&user()).unwrap());
        let none = format!("{}.{claims}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        let key = JwtKey::new(SECRET);
        assert_eq!(
            user_from_headers(&headers("cookie", session_cookie(&none)), &key),
            None
        );
        // HS512 with the right secret is still not HS256.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &user(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            user_from_headers(&headers("cookie", session_cookie(&hs512)), &key),
            None
        );
    }

    #[test]
    fn rejects_garbage_cookie_values() {
        let key = JwtKey::new(SECRET);
        for value in [
            "session=%%%not-base64",
            "session=",
            "session=e30=",
            "session=bm90IGpzb24=",
            "express:sess=!!",
        ] {
            assert_eq!(
                user_from_headers(&headers("cookie", value.into()), &key),
                None,
                "{value}"
            );
        }
    }

    #[test]
    fn honours_exp_when_present() {
        #[derive(Serialize)]
        struct WithExp<'a> {
            #[serde(flatten)]
            user: &'a UserPayload,
            exp: u64,
        }
        let key = JwtKey::new(SECRET);
        let sign = |exp| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &WithExp { user: &user(), exp },
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap()
        };
        let expired = session_cookie(&sign(unix_now() - 10));
        assert_eq!(user_from_headers(&headers("cookie", expired), &key), None);
        let valid = session_cookie(&sign(unix_now() + 600));
        assert_eq!(
            user_from_headers(&headers("cookie", valid), &key),
            Some(user())
        );
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        assert_eq!(
            format!("{:?}", JwtKey::new(b"super-secret")),
            "JwtKey(<redacted>)"
        );
    }

    #[tokio::test]
    async fn require_auth_answers_401_with_the_spec_body() {
        let app = Router::new()
            .route(
                "/me",
                get(|RequireAuth(user): RequireAuth| async move { user.email }),
            )
            .with_state(JwtKey::new(SECRET));
        let call = |cookie: Option<String>| {
            let app = app.clone();
            async move {
                let mut request = Request::get("/me");
                if let Some(cookie) = cookie {
                    request = request.header("cookie", cookie);
                }
                let response = app
                    .oneshot(request.body(axum::body::Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        assert_eq!(
            call(None).await,
            (
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"message":"Not authorized"}]}"#.to_owned()
            )
        );
        let cookie = session_cookie(&JwtKey::new(SECRET).sign(&user()));
        assert_eq!(
            call(Some(cookie)).await,
            (StatusCode::OK, "test@test.com".to_owned())
        );
    }
}
