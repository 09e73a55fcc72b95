//! Values identity accepts from the outside world, each constructible only when valid.

use std::fmt;

use platform::auth::{ROLE_ADMIN, ROLE_CUSTOMER};

/// An email address, trimmed and lower-cased: the form stored and compared everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// RFC 5321 caps a forward path at 256 octets including the angle brackets.
    const MAX_LEN: usize = 254;

    /// Checks the shape (`local@domain.tld`, no spaces), not deliverability: only a mail can prove that.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("must not be empty");
        }
        if email.len() > Self::MAX_LEN {
            return Err("must be at most 254 characters");
        }
        let (local, domain) = email.split_once('@').ok_or("must be an email address")?;
        let well_formed = !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return Err("must be an email address");
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password as typed: 8..=128 characters, never trimmed (spaces are part of it).
///
/// `Debug` hides the value, so a password cannot leak into a log line by accident.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    /// An upper bound keeps a single hash from being made arbitrarily expensive.
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let chars = raw.chars().count();
        if chars < Self::MIN_CHARS {
            return Err("must be at least 8 characters");
        }
        if chars > Self::MAX_CHARS {
            return Err("must be at most 128 characters");
        }
        Ok(Self(raw.to_owned()))
    }

    /// A password for a new account: [`Password::parse`], and not easy to guess (ASVS 5 6.2.4).
    ///
    /// zxcvbn matches it against its embedded lists of the most common passwords (30,000 of them),
    /// English words, names and keyboard patterns, including l33t and reversed variants, and against
    /// the account's own `user_inputs` (email, display name). A score below 3 ("safely unguessable:
    /// moderate protection from an offline attack") is refused; passphrases of several words pass.
    pub fn parse_new(raw: &str, user_inputs: &[&str]) -> Result<Self, &'static str> {
        let password = Self::parse(raw)?;
        if zxcvbn::zxcvbn(raw, user_inputs).score() < zxcvbn::Score::Three {
            return Err(Self::TOO_GUESSABLE);
        }
        Ok(password)
    }

    pub const TOO_GUESSABLE: &'static str = "is too easy to guess: it is a common password, a variation of one, or \
         made from your email or name; a passphrase of several unrelated words works well";

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// The name shown for a user: trimmed, 1..=100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("must not be empty");
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err("must be at most 100 characters");
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a user may do. Every account is a `customer`; operators grant `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            ROLE_CUSTOMER => Ok(Self::Customer),
            ROLE_ADMIN => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?}: expected {ROLE_CUSTOMER} or {ROLE_ADMIN}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => ROLE_CUSTOMER,
            Self::Admin => ROLE_ADMIN,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for raw in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "alice@@example.com",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} should be rejected");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn passwords_must_have_8_to_128_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(128)).is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        // Characters, not bytes: eight two-byte characters are a valid password.
        assert!(Password::parse("éééééééé").is_ok());
    }

    #[test]
    fn common_and_personal_passwords_are_refused_for_new_accounts() {
        let inputs = ["ada.lovelace@example.com", "Ada Lovelace"];
        for common in ["password", "password1", "12345678", "qwertyuiop", "iloveyou", "P@ssw0rd", "letmein!"]
        {
            assert_eq!(
                Password::parse_new(common, &inputs).unwrap_err(),
                Password::TOO_GUESSABLE,
                "{common}"
            );
        }
        assert!(Password::parse_new("adalovelace", &inputs).is_err(), "the user's own name");
        // The passphrases the tests and the documentation use.
        for good in ["correct horse battery staple", "correct horse battery", "tangerine orbit 42 velvet"] {
            assert!(Password::parse_new(good, &inputs).is_ok(), "{good}");
        }
        // Length rules come first.
        assert_eq!(Password::parse_new("abc", &inputs).unwrap_err(), "must be at least 8 characters");
    }

    #[test]
    fn the_strength_check_survives_any_input() {
        // How long the check takes is measured by the login benchmark, not asserted here.
        let hostile =
            ["é".repeat(128), "\u{0}".repeat(128), "👩‍👩‍👧‍👦".repeat(18), "a".repeat(128), "1a".repeat(64)];
        for raw in &hostile {
            let _ = Password::parse_new(raw, &["x@example.com", "\u{202e}"]);
        }
    }

    #[test]
    fn passwords_keep_their_spaces_and_hide_in_debug_output() {
        let password = Password::parse("  spaced out  ").unwrap();
        assert_eq!(password.as_bytes(), b"  spaced out  ");
        assert_eq!(format!("{password:?}"), "Password(..)");
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  Ada Lovelace ").unwrap().as_str(), "Ada Lovelace");
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"é".repeat(100)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(101)).is_err());
        assert!(DisplayName::parse("bell\u{7}").is_err());
    }

    #[test]
    fn roles_parse_case_insensitively() {
        assert_eq!(Role::parse("Admin").unwrap(), Role::Admin);
        assert_eq!(Role::parse("customer").unwrap().as_str(), "customer");
        assert!(Role::parse("root").is_err());
    }
}
