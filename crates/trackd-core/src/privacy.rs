//! Data lifecycle and privacy (DESIGN §10): the suppression list's keyed hashes, which
//! identifiers of a write it checks, and the audit log's entries.

use crate::event::EventRecord;
use crate::identity::Identity;
use crate::project::ProjectId;
use crate::read::Cursor;
use crate::segment::{Message, Write};
use crate::time::Timestamp;
use crate::users::{ProfileChange, ProfileRequest};
use crate::FieldError;

/// Bytes of a suppression hash kept (128 bits).
pub const SUPPRESSION_HASH_BYTES: usize = 16;

/// A suppression hash: the keyed hash of a project and a user identifier.
pub type SuppressionHash = [u8; SUPPRESSION_HASH_BYTES];

/// The key the suppression list's hashes are made with, derived from the store's secret
/// (the one cursors are sealed with, [`crate::Store::cursor_key`]): every node of one data
/// set hashes alike, and a copy of the list without the secret says nothing about whom it
/// names (an unkeyed hash of an email is found by hashing candidate emails).
#[derive(Clone)]
pub struct SuppressionKey([u8; 32]);

impl std::fmt::Debug for SuppressionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuppressionKey(..)")
    }
}

impl SuppressionKey {
    /// The key made from the store's secret.
    pub fn new(secret: &[u8; 32]) -> Self {
        SuppressionKey(crate::read::hmac(secret, &[b"trackd suppression"]))
    }

    /// The hash of `identifier` (a user key, id or email) in `project`.
    pub fn hash(&self, project: ProjectId, identifier: &str) -> SuppressionHash {
        let full = crate::read::hmac(
            &self.0,
            &[&project.get().to_be_bytes(), identifier.as_bytes()],
        );
        let mut out = [0u8; SUPPRESSION_HASH_BYTES];
        out.copy_from_slice(&full[..SUPPRESSION_HASH_BYTES]);
        out
    }

    /// How an audit entry names a user: `user:` and the hex of the hash of its key.
    pub fn audit_target(&self, project: ProjectId, user_key: &str) -> String {
        let hash = self.hash(project, user_key);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        format!("user:{hex}")
    }
}

/// The identifiers a suppression check looks at for an identity: its id and its email. A
/// write naming a suppressed person by either is refused, whatever else it names.
pub fn identity_identifiers(identity: &Identity) -> impl Iterator<Item = &str> {
    identity
        .id()
        .map(|id| id.as_str())
        .into_iter()
        .chain(identity.email().map(|e| e.as_str()))
}

/// The identifiers a profile change names: the user it is about and, for a rename, the
/// user it would become (a suppressed person is not recreated by renaming someone to them).
pub fn change_identifiers(change: &ProfileChange) -> Vec<&str> {
    match change {
        ProfileChange::Track { identity, .. } => identity_identifiers(identity).collect(),
        ProfileChange::Edit { user, .. }
        | ProfileChange::Tags { user, .. }
        | ProfileChange::Subscription { user, .. }
        | ProfileChange::Delete { user } => vec![user.key()],
        ProfileChange::Reidentify { id, new_id } => vec![id.as_str(), new_id.as_str()],
    }
}

/// Whether a write is suppressed: `suppressed` answers for one identifier.
pub trait Suppressible {
    /// Its project and the identifiers it names.
    fn identifiers(&self) -> (ProjectId, Vec<&str>);
}

impl Suppressible for EventRecord {
    fn identifiers(&self) -> (ProjectId, Vec<&str>) {
        (self.project, identity_identifiers(&self.identity).collect())
    }
}

impl Suppressible for ProfileRequest {
    fn identifiers(&self) -> (ProjectId, Vec<&str>) {
        (self.project, change_identifiers(&self.change))
    }
}

impl Suppressible for Message {
    fn identifiers(&self) -> (ProjectId, Vec<&str>) {
        match &self.write {
            Write::Event(event) => event.identifiers(),
            Write::Profile(request) => request.identifiers(),
        }
    }
}

/// What a suppression did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    /// A user of that key existed and was deleted with its events.
    pub deleted: bool,
    /// It was already suppressed (the list is unchanged; a user recreated since, by an
    /// import, is deleted again).
    pub already: bool,
}

/// Who did an administrative act: a secret key (by fingerprint) or the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A secret key, by its fingerprint ([`crate::TokenHash::fingerprint`]).
    Key(String),
    /// The `trackd` command line.
    Cli,
}

impl Actor {
    /// How the audit log shows it: `key:<fingerprint>` or `cli`.
    pub fn name(&self) -> String {
        match self {
            Actor::Key(fingerprint) => format!("key:{fingerprint}"),
            Actor::Cli => "cli".to_owned(),
        }
    }
}

/// An administrative act to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditAct {
    /// The project it concerns.
    pub project: ProjectId,
    /// Who did it.
    pub actor: Actor,
    /// What: `project.create`, `token.add`, `user.suppress`, ….
    pub action: &'static str,
    /// What it was done to: a project or destination name, a credential fingerprint, a user
    /// as `user:<hash>` (never the id itself).
    pub target: String,
}

impl AuditAct {
    /// An act on a user, named by the keyed hash of its key.
    pub fn on_user(
        key: &SuppressionKey,
        project: ProjectId,
        user_key: &str,
        actor: Actor,
        action: &'static str,
    ) -> Self {
        AuditAct {
            project,
            actor,
            action,
            target: key.audit_target(project, user_key),
        }
    }
}

/// A recorded act, as the audit log answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its position in the log.
    pub id: i64,
    /// When it was recorded.
    pub at: Timestamp,
    /// Who did it (`key:<fingerprint>` or `cli`).
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub target: String,
}

impl AuditEntry {
    /// The JSON an entry is answered as.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "at": self.at.to_rfc3339(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
        })
    }
}

/// A page of the audit log: a project's entries newest first, at or after `since`, after
/// the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Whose entries.
    pub project: ProjectId,
    /// Only entries recorded at or after this time.
    pub since: Option<Timestamp>,
    /// At most this many (the read API's `limit`: 1 to 1,000, 100 by default).
    pub limit: usize,
    /// Only entries older than the cursor's (`id` is the last entry answered).
    pub before: Option<i64>,
}

impl AuditQuery {
    /// Reads `since`, `limit` and `cursor` from a query string's pairs; other names are a
    /// 400, as on every read route.
    pub fn parse(
        project: ProjectId,
        pairs: &[(String, String)],
        key: &crate::read::CursorKey,
    ) -> Result<Self, FieldError> {
        let params = crate::read::Params::new(pairs, &["since", "limit", "cursor"])?;
        let before = match params.get("cursor") {
            Some(text) => Some(Cursor::open(text, key, &audit_scope(project))?.id),
            None => None,
        };
        Ok(AuditQuery {
            project,
            since: params.time("since")?,
            limit: params.limit()?,
            before,
        })
    }
}

/// What an audit cursor is sealed for: the log of one project (a cursor of another project,
/// or of an event listing, fails to open).
pub fn audit_scope(project: ProjectId) -> Vec<u8> {
    let mut scope = b"audit:".to_vec();
    scope.extend_from_slice(&project.get().to_be_bytes());
    scope
}

/// The cursor that continues after `last`.
pub fn audit_cursor(last: &AuditEntry) -> Cursor {
    Cursor {
        created_at: last.at.as_micros(),
        id: last.id,
        max_id: 0,
    }
}

/// The shortest retention accepted (shorter would delete events as they arrive).
pub const MIN_RETENTION_MICROS: i64 = 60 * 1_000_000;
/// The longest (100 years): past it, say `off`.
pub const MAX_RETENTION_MICROS: i64 = 100 * 365 * 86_400 * 1_000_000;

/// Reads a retention: a whole number with a unit (`s`, `m`, `h`, `d`, `w`: `90d`, `12h`), or
/// `off` (`None`: kept for ever). From one minute to 100 years.
pub fn parse_retention(text: &str) -> Result<Option<i64>, FieldError> {
    let invalid = || {
        FieldError::new(
            "retention",
            "must be a whole number and a unit (s, m, h, d, w), such as 90d, or off",
        )
    };
    if text == "off" {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(split);
    let unit_micros: i64 = match unit {
        "s" => 1_000_000,
        "m" => 60 * 1_000_000,
        "h" => 3_600 * 1_000_000,
        "d" => 86_400 * 1_000_000,
        "w" => 7 * 86_400 * 1_000_000,
        _ => return Err(invalid()),
    };
    let micros = digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_micros))
        .ok_or_else(invalid)?;
    if !(MIN_RETENTION_MICROS..=MAX_RETENTION_MICROS).contains(&micros) {
        return Err(FieldError::new(
            "retention",
            "must be from 1 minute (1m) to 100 years, or off",
        ));
    }
    Ok(Some(micros))
}

/// A retention as `parse_retention` reads it, in the largest unit that divides it; `off`.
pub fn format_retention(retention: Option<i64>) -> String {
    let Some(micros) = retention else {
        return "off".to_owned();
    };
    let secs = micros / 1_000_000;
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// What one step of retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Events received before the cutoff (their counts stay in the statistics).
    pub events: u64,
    /// Outbox items received before the cutoff, delivered or not.
    pub items: u64,
}

/// Events (and items) one retention step deletes at most: a transaction of this many holds
/// the writer a few milliseconds.
pub const RETENTION_CHUNK: usize = 500;

/// The width of the buckets expired events' counts are kept in (an hour: the statistics'
/// finest interval).
pub const ROLLUP_MICROS: i64 = 3_600 * 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_a_number_and_a_unit_or_off() {
        assert_eq!(parse_retention("off"), Ok(None));
        assert_eq!(parse_retention("90d"), Ok(Some(90 * 86_400 * 1_000_000)));
        assert_eq!(parse_retention("1m"), Ok(Some(60 * 1_000_000)));
        for bad in [
            "",
            "90",
            "d",
            "1.5d",
            "-1d",
            "90 d",
            "90D",
            "99999999999999999w",
        ] {
            assert_eq!(
                parse_retention(bad).map_err(|e| e.to_string()),
                Err(
                    "retention: must be a whole number and a unit (s, m, h, d, w), such as \
                     90d, or off"
                        .to_owned()
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_retention("59s").map_err(|e| e.to_string()),
            Err("retention: must be from 1 minute (1m) to 100 years, or off".to_owned())
        );
        for text in ["off", "90d", "2w", "36h", "90m", "61s"] {
            assert_eq!(
                format_retention(parse_retention(text).expect("valid")),
                text
            );
        }
    }

    #[test]
    fn hashes_are_keyed_by_the_secret_and_the_project() {
        let a = SuppressionKey::new(&[1; 32]);
        let b = SuppressionKey::new(&[2; 32]);
        let p1 = ProjectId::new(1);
        let p2 = ProjectId::new(2);
        assert_eq!(a.hash(p1, "u1"), a.hash(p1, "u1"));
        assert_ne!(a.hash(p1, "u1"), b.hash(p1, "u1"));
        assert_ne!(a.hash(p1, "u1"), a.hash(p2, "u1"));
        assert_ne!(a.hash(p1, "u1"), a.hash(p1, "u2"));
        let target = a.audit_target(p1, "u1");
        assert!(target.starts_with("user:") && target.len() == 5 + 32);
        assert!(!target.contains("u1"));
    }
}
