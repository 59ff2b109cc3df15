//! The room a join token grants, read before the library connects.
//!
//! LiveKit joins the room the token names, whatever the request's `room_name` says. A backend
//! that names one room and signs a token for another would have its user's session sit in a
//! room where its target never is, with nothing to say so. So a join that names a room its
//! token does not grant is refused at once, saying both names.
//!
//! Only the token's `video.room` claim is read here, without checking the signature or the
//! expiry: LiveKit's server verifies the token, and a token this cannot read (not a JWT, no
//! room claim) is left for the server to accept or refuse.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a join naming `room_name` cannot work with `token`, if it cannot. An empty
/// `room_name` names no room: the token's is the one joined.
pub(super) fn refusal(room_name: &str, token: &str) -> Option<String> {
    if room_name.is_empty() {
        return None;
    }
    let granted = granted_room(token)?;
    (granted != room_name).then(|| {
        format!(
            "the token grants room {granted:?}, not room_name {room_name:?}: sign the token for \
             the room the join names, or leave room_name empty"
        )
    })
}

/// The `video.room` claim of a JSON Web Token, if `token` is one and names a room.
fn granted_room(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_header, claims, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(claims.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let room = claims.get("video")?.get("room")?.as_str()?;
    (!room.is_empty()).then(|| room.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let part = |s: &str| URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", part(r#"{"alg":"HS256"}"#), part(claims))
    }

    #[test]
    fn a_named_room_the_token_does_not_grant_is_refused_saying_both() {
        let token =
            jwt(r#"{"sub":"cloud-agent:kim","video":{"room":"elsewhere","roomJoin":true}}"#);
        let said = refusal("kim", &token).expect("refused");
        assert!(said.contains(r#"room "elsewhere""#) && said.contains(r#"room_name "kim""#));
        assert_eq!(refusal("elsewhere", &token), None);
        assert_eq!(
            refusal("", &token),
            None,
            "no room named: the token's is joined"
        );
    }

    #[test]
    fn tokens_that_name_no_room_are_left_to_the_server() {
        for token in [
            "not-a-jwt".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "eyJ.!!!.c".to_owned(),
            jwt("not json"),
            jwt(r#"{"sub":"x"}"#),
            jwt(r#"{"video":{"roomJoin":true}}"#),
            jwt(r#"{"video":{"room":""}}"#),
            jwt(r#"{"video":{"room":7}}"#),
            String::new(),
        ] {
            assert_eq!(refusal("kim", &token), None, "{token}");
        }
    }
}
