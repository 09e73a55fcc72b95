//! Accounts: registration, the stored profile and roles, and granting roles.

use sqlx::PgPool;
use uuid::Uuid;

use crate::access_tokens::Subject;
use crate::domain::{DisplayName, Email, Password, Role};
use crate::error::Error;
use crate::passwords::PasswordHasher;

/// What a registration provides, already validated.
#[derive(Debug)]
pub struct NewAccount {
    pub email: Email,
    pub password: Password,
    pub display_name: DisplayName,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
}

#[derive(Clone)]
pub struct Accounts {
    pool: PgPool,
    hasher: PasswordHasher,
}

impl Accounts {
    pub fn new(pool: PgPool, hasher: PasswordHasher) -> Self {
        Self { pool, hasher }
    }

    /// Creates a `customer` account. The email's uniqueness is the database's to enforce: checking
    /// first would race with a concurrent registration of the same email.
    pub async fn register(&self, account: NewAccount) -> Result<Uuid, Error> {
        let password_hash = self.hasher.hash(account.password).await?;
        let user_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        let inserted =
            sqlx::query("INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, $3, $4)")
                .bind(user_id)
                .bind(account.email.as_str())
                .bind(account.display_name.as_str())
                .bind(&password_hash)
                .execute(&mut *tx)
                .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(Error::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2)")
            .bind(user_id)
            .bind(Role::Customer.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(user_id)
    }

    /// The account id and stored password hash for `email`, if registered.
    pub async fn credentials(&self, email: &Email) -> Result<Option<(Uuid, String)>, Error> {
        Ok(sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// What goes into an access token for `user_id`: read fresh at every login and refresh, so a
    /// granted role shows up at the next refresh.
    pub async fn subject(&self, user_id: Uuid) -> Result<Option<Subject>, Error> {
        let row: Option<(String, Vec<String>)> = sqlx::query_as(
            "SELECT u.email, coalesce(array_agg(r.role ORDER BY r.role) FILTER (WHERE r.role IS NOT NULL), '{}')
             FROM users u LEFT JOIN user_roles r ON r.user_id = u.id
             WHERE u.id = $1 GROUP BY u.id",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(email, roles)| Subject { user_id, email, roles }))
    }

    pub async fn profile(&self, user_id: Uuid) -> Result<Option<Profile>, Error> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT email, display_name FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(email, display_name)| Profile { user_id, email, display_name }))
    }
}

/// What granting a role changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    Granted,
    AlreadyHeld,
}

/// Gives the account registered with `email` the role `role`.
pub async fn grant_role(pool: &PgPool, email: &Email, role: Role) -> anyhow::Result<Granted> {
    let user_id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email.as_str())
        .fetch_optional(pool)
        .await?;
    let user_id = user_id.ok_or_else(|| anyhow::anyhow!("no account is registered with {email}"))?;
    let inserted =
        sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .bind(role.as_str())
            .execute(pool)
            .await?
            .rows_affected();
    Ok(if inserted == 1 { Granted::Granted } else { Granted::AlreadyHeld })
}
