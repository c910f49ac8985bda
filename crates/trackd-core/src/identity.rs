//! Who an event or profile change is about: [`UserId`], [`Email`], and the [`Identity`]
//! whose [`user_key`](Identity::user_key) names the user.

use serde_json::{Map, Value};

use crate::error::FieldError;

/// The longest id or email accepted, in Unicode scalar values (Vero: "less than 255").
pub const MAX_IDENTITY_CHARS: usize = 254;

/// A user id: a non-empty string of at most 254 characters (an integer id is kept as its
/// decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// Reads an id from a JSON value: a string or an integer. `None` for null or `""`.
    pub fn parse(value: &Value, field: &str) -> Result<Option<Self>, FieldError> {
        let text = match value {
            Value::Null => return Ok(None),
            Value::String(s) if s.is_empty() => return Ok(None),
            Value::String(s) => s.clone(),
            Value::Number(n) => {
                let text = n.to_string();
                if !text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                    return Err(FieldError::new(field, "must be a string or an integer"));
                }
                // The integer's decimal string: -0 is 0 (JSON allows no other leading zero).
                if text == "-0" {
                    "0".to_owned()
                } else {
                    text
                }
            }
            _ => return Err(FieldError::new(field, "must be a string or an integer")),
        };
        check_length(&text, field)?;
        Ok(Some(UserId(text)))
    }

    /// Reads an id given as text outside a JSON body (a URL path, a command line), where
    /// the JSON reader's checks have not run: it must not be empty or hold a NUL.
    pub fn from_text(text: &str, field: &str) -> Result<Self, FieldError> {
        if text.contains('\0') {
            return Err(FieldError::new(field, "contains a NUL character (\\u0000)"));
        }
        match Self::parse(&Value::String(text.to_owned()), field)? {
            Some(id) => Ok(id),
            None => Err(FieldError::new(field, "is required")),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address that passes the WHATWG rule for `<input type=email>`, at most 254
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Reads an email from a JSON value: a string, or null. `None` for null or `""`.
    pub fn parse(value: &Value, field: &str) -> Result<Option<Self>, FieldError> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => {
                check_length(s, field)?;
                if !is_valid_email(s) {
                    return Err(FieldError::new(field, "not a valid email address"));
                }
                Ok(Some(Email(s.clone())))
            }
            _ => Err(FieldError::new(field, "must be a string or null")),
        }
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_length(s: &str, field: &str) -> Result<(), FieldError> {
    // Bytes bound characters from above: skip the count for the common short case.
    if s.len() > MAX_IDENTITY_CHARS && s.chars().count() > MAX_IDENTITY_CHARS {
        return Err(FieldError::new(
            field,
            format!("longer than {MAX_IDENTITY_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The WHATWG "valid e-mail address" rule (what browsers accept in `<input type=email>`):
/// `local@label(.label)*`, the local part from a fixed ASCII set, each label 1-63 ASCII
/// letters, digits or hyphens, not starting or ending with a hyphen.
pub fn is_valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".!#$%&'*+/=?^_`{|}~-".contains(&b));
    local_ok
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A user named by id, email or both; at least one is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    id: Option<UserId>,
    email: Option<Email>,
}

impl Identity {
    /// Reads `id` and `email` from an object (other keys are ignored: older clients put
    /// profile traits there). `prefix` is the object's path in error messages (`identity.`
    /// or `""` for top-level fields).
    pub fn from_fields(fields: &Map<String, Value>, prefix: &str) -> Result<Self, FieldError> {
        let id_field = format!("{prefix}id");
        let email_field = format!("{prefix}email");
        let id = match fields.get("id") {
            Some(v) => UserId::parse(v, &id_field)?,
            None => None,
        };
        let email = match fields.get("email") {
            Some(v) => Email::parse(v, &email_field)?,
            None => None,
        };
        if id.is_none() && email.is_none() {
            // Named `identity` also for top-level `id`/`email`: a client that sent neither
            // most likely forgot the `identity` object.
            return Err(FieldError::new("identity", "an id or an email is required"));
        }
        Ok(Identity { id, email })
    }

    /// An identity of the given parts; `None` when neither is given.
    pub fn new(id: Option<UserId>, email: Option<Email>) -> Option<Self> {
        (id.is_some() || email.is_some()).then_some(Identity { id, email })
    }

    /// The id, if one was given.
    pub fn id(&self) -> Option<&UserId> {
        self.id.as_ref()
    }

    /// The email, if one was given.
    pub fn email(&self) -> Option<&Email> {
        self.email.as_ref()
    }

    /// The user key: the id when present, otherwise the email.
    pub fn user_key(&self) -> &str {
        match (&self.id, &self.email) {
            (Some(id), _) => id.as_str(),
            (None, Some(email)) => email.as_str(),
            // `from_fields` refuses an identity with neither.
            (None, None) => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(v: Value) -> Result<Identity, String> {
        let Value::Object(map) = v else {
            panic!("object")
        };
        Identity::from_fields(&map, "identity.").map_err(|e| e.to_string())
    }

    #[test]
    fn integer_id_is_kept_as_its_decimal_string() {
        let i = identity(json!({"id": 1000})).expect("valid");
        assert_eq!(i.user_key(), "1000");
        let big: Value = serde_json::from_str(r#"{"id": 123456789012345678901234}"#).expect("json");
        assert_eq!(
            identity(big).expect("valid").user_key(),
            "123456789012345678901234"
        );
        // -0 is the integer 0: its decimal string is "0", one user with 0.
        let minus_zero: Value = serde_json::from_str(r#"{"id": -0}"#).expect("json");
        assert_eq!(identity(minus_zero).expect("valid").user_key(), "0");
        let negative: Value = serde_json::from_str(r#"{"id": -10}"#).expect("json");
        assert_eq!(identity(negative).expect("valid").user_key(), "-10");
    }

    #[test]
    fn fractional_or_other_ids_are_refused() {
        for bad in [
            json!({"id": 1.5}),
            json!({"id": true}),
            json!({"id": [1]}),
            json!({"id": 1e3}),
        ] {
            assert_eq!(
                identity(bad).expect_err("refused"),
                "identity.id: must be a string or an integer"
            );
        }
    }

    #[test]
    fn user_key_is_the_id_else_the_email() {
        let both = identity(json!({"id": "42", "email": "a@example.com"})).expect("valid");
        assert_eq!(both.user_key(), "42");
        let email_only = identity(json!({"id": "", "email": "a@example.com"})).expect("valid");
        assert_eq!(email_only.user_key(), "a@example.com");
        let null_email = identity(json!({"id": "43", "email": null})).expect("valid");
        assert_eq!(null_email.email(), None);
    }

    #[test]
    fn neither_id_nor_email_is_refused() {
        for bad in [
            json!({}),
            json!({"id": "", "email": ""}),
            json!({"id": null, "email": null}),
        ] {
            assert_eq!(
                identity(bad).expect_err("refused"),
                "identity: an id or an email is required"
            );
        }
    }

    #[test]
    fn lengths_254_accepted_255_refused_counting_characters() {
        let ok = "é".repeat(254);
        assert!(identity(json!({"id": ok})).is_ok());
        let long = "é".repeat(255);
        assert_eq!(
            identity(json!({"id": long})).expect_err("refused"),
            "identity.id: longer than 254 characters"
        );
        let local = "a".repeat(254 - "@example.com".len());
        assert!(identity(json!({"email": format!("{local}@example.com")})).is_ok());
        assert_eq!(
            identity(json!({"email": format!("{local}a@example.com")})).expect_err("refused"),
            "identity.email: longer than 254 characters"
        );
    }

    #[test]
    fn whatwg_email_rule() {
        for ok in [
            "a@b",
            "a.b+c@example.com",
            "x@localhost",
            "!#$%&'*+/=?^_`{|}~-@a-b.c",
        ] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "plain",
            "@example.com",
            "a@",
            "a@-b.com",
            "a@b-.com",
            "a@b..com",
            "a@b.com.",
            "a b@c.com",
            "a@b@c",
            "é@example.com",
            "a@exämple.com",
            &format!("a@{}.com", "x".repeat(64)),
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
        assert!(is_valid_email(&format!("a@{}.com", "x".repeat(63))));
    }
}
