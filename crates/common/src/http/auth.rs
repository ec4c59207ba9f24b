//! Who is calling (docs/contract.md §5).
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

    /// The user in `token` if it is an HS256 JWT signed with this key whose claims pass
    /// [`check_claims`] now.
    pub fn verify(&self, token: &str) -> Option<UserPayload> {
        let mut validation = Validation::new(Algorithm::HS256);
        // The signature and algorithm only: the claims are checked strictly below, because the
        // library skips an `exp` or `nbf` that is not a number instead of refusing the token.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                tracing::debug!(error = %e, "rejected token");
                return None;
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        match check_claims(&claims, now) {
            Ok(user) => Some(user),
            Err(reason) => {
                tracing::debug!(%reason, "rejected token");
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

/// A token's claims as they are, before [`check_claims`].
type Claims = serde_json::Map<String, serde_json::Value>;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: f64 = 5.0;

/// Longest `id` accepted, in bytes (the auth service's are 24-digit ObjectIds).
pub const MAX_USER_ID_BYTES: usize = 128;

/// Longest `email` accepted, in bytes.
pub const MAX_EMAIL_BYTES: usize = 320;

/// The user of a signed token's `claims` at `now` (seconds since the epoch): `exp`, `nbf` and
/// `iat` must be numbers when present (not strings, not `null`) and hold now, within
/// [`LEEWAY_SECONDS`] (not expired, already valid, not issued in the future); `id` must be a
/// non-empty string of at most [`MAX_USER_ID_BYTES`], `email` a string.
pub fn check_claims(claims: &Claims, now: f64) -> Result<UserPayload, String> {
    let time = |name: &str| -> Result<Option<f64>, String> {
        match claims.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .filter(|t| t.is_finite())
                .map(Some)
                .ok_or_else(|| format!("`{name}` is not a number")),
        }
    };
    if let Some(exp) = time("exp")?
        && now >= exp + LEEWAY_SECONDS
    {
        return Err("expired".into());
    }
    if let Some(nbf) = time("nbf")?
        && nbf > now + LEEWAY_SECONDS
    {
        return Err("not valid yet (`nbf`)".into());
    }
    let iat = time("iat")?;
    if iat.is_some_and(|iat| iat > now + LEEWAY_SECONDS) {
        return Err("issued in the future (`iat`)".into());
    }
    let id = match claims.get("id") {
        Some(serde_json::Value::String(id)) if !id.trim().is_empty() => id,
        _ => return Err("`id` is not a non-empty string".into()),
    };
    if id.len() > MAX_USER_ID_BYTES {
        return Err(format!("`id` is longer than {MAX_USER_ID_BYTES} bytes"));
    }
    let email = match claims.get("email") {
        Some(serde_json::Value::String(email)) if email.len() <= MAX_EMAIL_BYTES => email,
        _ => return Err("`email` is not a string of reasonable length".into()),
    };
    Ok(UserPayload {
        id: id.clone(),
        email: email.clone(),
        // Whole seconds, as the auth service writes it.
        iat: iat.filter(|t| *t >= 0.0).map(|t| t as u64),
    })
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
    fn claims_must_be_numbers_of_the_right_time_and_the_id_a_bounded_string() {
        let key = JwtKey::new(SECRET);
        let now = unix_now() as i64;
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap()
        };
        let base = || serde_json::json!({ "id": "6745a1e9c2b1a4d5e6f70811", "email": "a@b.c" });
        let with = |name: &str, value: serde_json::Value| {
            let mut claims = base();
            claims[name] = value;
            claims
        };
        for (claims, why) in [
            (with("exp", "9999999999".into()), "a string exp"),
            (with("exp", (-1).into()), "a negative exp"),
            (with("exp", serde_json::Value::Null), "a null exp"),
            (with("exp", (now - 30).into()), "an exp past the leeway"),
            (with("nbf", (now + 3600).into()), "an nbf an hour ahead"),
            (with("nbf", "0".into()), "a string nbf"),
            (with("iat", (now + 3600).into()), "an iat an hour ahead"),
            (with("iat", serde_json::Value::Null), "a null iat"),
            (with("id", "".into()), "an empty id"),
            (with("id", "x".repeat(1000).into()), "a 1000-byte id"),
            (with("id", 42.into()), "a numeric id"),
            (with("id", serde_json::Value::Null), "a null id"),
            (with("email", serde_json::Value::Null), "a null email"),
        ] {
            let cookie = session_cookie(&sign(claims));
            assert_eq!(
                user_from_headers(&headers("cookie", cookie), &key),
                None,
                "accepted {why}"
            );
        }
        for (claims, why) in [
            (base(), "no time claims at all (the auth service's tokens)"),
            (with("exp", (now + 600).into()), "an exp ahead"),
            (with("exp", (now - 2).into()), "an exp within the leeway"),
            (with("nbf", (now - 10).into()), "an nbf passed"),
            (with("iat", now.into()), "an iat of now"),
            (with("exp", (now as f64 + 600.5).into()), "a fractional exp"),
        ] {
            let cookie = session_cookie(&sign(claims));
            assert!(
                user_from_headers(&headers("cookie", cookie), &key).is_some(),
                "refused {why}"
            );
        }
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
