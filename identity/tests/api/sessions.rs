//! Logging in, refreshing and logging out.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{PASSWORD, Tokens, spawn_app, unique_email};

#[tokio::test]
async fn a_user_registers_logs_in_refreshes_and_logs_out() {
    let app = spawn_app().await;
    let email = unique_email();
    let registered: Value = app.register(&email, PASSWORD, "Grace Hopper").await.json().await.unwrap();

    let response = app.login(&email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["expiresIn"], 900);
    let first = Tokens {
        access: body["accessToken"].as_str().unwrap().to_owned(),
        refresh: body["refreshToken"].as_str().unwrap().to_owned(),
    };

    let me = app.me(&first.access).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["userId"], registered["userId"]);
    assert_eq!(me["email"], email.as_str());
    assert_eq!(me["displayName"], "Grace Hopper");
    assert_eq!(me["roles"], serde_json::json!(["customer"]));

    let refreshed = app.refresh(&first.refresh).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let second = Tokens::from(refreshed).await;
    assert_ne!(second.refresh, first.refresh);
    assert_eq!(app.me(&second.access).await.status(), StatusCode::OK);

    // The first refresh token was spent: presenting it again looks like theft, so the whole family
    // goes, including the token the legitimate refresh just received.
    assert_eq!(app.refresh(&first.refresh).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.refresh(&second.refresh).await.status(), StatusCode::UNAUTHORIZED);

    // A fresh login starts a new family, which logout revokes.
    let third = app.session(&email).await;
    assert_eq!(app.logout(&third.refresh).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.refresh(&third.refresh).await.status(), StatusCode::UNAUTHORIZED);
    // Logging out again is harmless.
    assert_eq!(app.logout(&third.refresh).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn logout_revokes_only_that_session() {
    let app = spawn_app().await;
    let email = unique_email();
    let phone = app.registered_session(&email).await;
    let laptop = app.session(&email).await;

    assert_eq!(app.logout(&phone.refresh).await.status(), StatusCode::NO_CONTENT);

    assert_eq!(app.refresh(&phone.refresh).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.refresh(&laptop.refresh).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_identical_answers() {
    let app = spawn_app().await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Known").await;

    let wrong_password = app.login(&email, "not the password").await;
    let unknown_email = app.login(&unique_email(), "not the password").await;

    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_email.status(), StatusCode::UNAUTHORIZED);
    let header_names = |r: &reqwest::Response| {
        let mut names: Vec<String> = r
            .headers()
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("")))
            .collect();
        names.sort();
        names
    };
    assert_eq!(header_names(&wrong_password), header_names(&unknown_email));
    assert_eq!(wrong_password.text().await.unwrap(), unknown_email.text().await.unwrap());
}

#[tokio::test]
async fn garbage_refresh_tokens_are_unauthorized() {
    let app = spawn_app().await;
    for token in ["", "not-a-token", &"A".repeat(43)] {
        let response = app.refresh(token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }
}

#[tokio::test]
async fn twenty_concurrent_refreshes_of_one_token_have_exactly_one_winner() {
    let app = spawn_app().await;
    let tokens = app.registered_session(&unique_email()).await;

    let attempts = (0..20).map(|_| app.refresh(&tokens.refresh));
    let responses = futures::future::join_all(attempts).await;

    let statuses: Vec<StatusCode> = responses.iter().map(reqwest::Response::status).collect();
    let winners = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let losers = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert_eq!((winners, losers), (1, 19), "{statuses:?}");

    // The losers presented a token that was spent by then, which is indistinguishable from theft:
    // the family is revoked, so even the winner's new refresh token no longer works.
    let winner = responses.into_iter().find(|r| r.status() == StatusCode::OK).unwrap();
    let won = Tokens::from(winner).await;
    assert_eq!(app.refresh(&won.refresh).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn me_requires_a_bearer_token() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}
