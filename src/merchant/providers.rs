//! Who delivers what Dial sells, behind thin traits: the built-in sandbox (records everything, so the
//! whole flow runs on a fresh machine) or Twilio's REST API for SMS and numbers.

use futures::future::BoxFuture;
use rand::Rng;
use serde::Deserialize;

use crate::config::TwilioConfig;

/// A provider failed to deliver; the payment it followed is owed a refund.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    pub provider: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct SentMessage {
    pub message_id: String,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct BoughtNumber {
    pub phone_number: String,
    pub provider_id: String,
}

#[derive(Debug, Clone)]
pub struct IssuedEsim {
    pub iccid: String,
    pub activation_code: String,
}

#[derive(Debug, Clone)]
pub struct StartedVerification {
    pub verification_id: String,
    pub phone_number: String,
}

pub trait SmsProvider: Send + Sync {
    fn name(&self) -> &'static str;
    fn send<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, Result<SentMessage, ProviderError>>;
}

pub trait NumberProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Buys a number in `country` (ISO 3166 alpha-2).
    fn buy<'a>(&'a self, country: &'a str) -> BoxFuture<'a, Result<BoughtNumber, ProviderError>>;
    /// Gives a number back; releasing one already released succeeds (the call may be repeated).
    fn release<'a>(&'a self, provider_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
}

pub trait EsimProvider: Send + Sync {
    fn issue<'a>(&'a self, package_id: &'a str)
    -> BoxFuture<'a, Result<IssuedEsim, ProviderError>>;
}

pub trait VerificationProvider: Send + Sync {
    fn start<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<StartedVerification, ProviderError>>;
}

/// Countries numbers are sold in, with the E.164 prefix the sandbox draws from.
pub const NUMBER_COUNTRIES: &[(&str, &str)] = &[
    ("US", "+1555"),
    ("CA", "+1555"),
    ("GB", "+447700"),
    ("DE", "+49155"),
    ("FR", "+33700"),
    ("NL", "+31970"),
    ("ES", "+34590"),
    ("AU", "+61491"),
];

fn random_digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

pub(crate) fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill(&mut bytes);
    format!("{prefix}{}", alloy::hex::encode(bytes))
}

/// The sandbox: delivers nothing, invents plausible identifiers; Dial records every result.
pub struct Sandbox;

impl SmsProvider for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }
    fn send<'a>(
        &'a self,
        _from: &'a str,
        _to: &'a str,
        _body: &'a str,
    ) -> BoxFuture<'a, Result<SentMessage, ProviderError>> {
        Box::pin(async {
            Ok(SentMessage {
                message_id: random_id("msg_"),
                status: "delivered".into(),
            })
        })
    }
}

impl NumberProvider for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }
    fn buy<'a>(&'a self, country: &'a str) -> BoxFuture<'a, Result<BoughtNumber, ProviderError>> {
        Box::pin(async move {
            let prefix = NUMBER_COUNTRIES
                .iter()
                .find(|(c, _)| *c == country)
                .map(|(_, p)| *p)
                .ok_or_else(|| ProviderError {
                    provider: "sandbox",
                    message: format!("no numbers in {country}"),
                })?;
            // 12 digits after the + keeps every prefix valid E.164.
            let rest = 12usize.saturating_sub(prefix.len() - 1).max(4);
            Ok(BoughtNumber {
                phone_number: format!("{prefix}{}", random_digits(rest)),
                provider_id: random_id("PN"),
            })
        })
    }
    fn release<'a>(&'a self, _provider_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
}

impl EsimProvider for Sandbox {
    fn issue<'a>(
        &'a self,
        _package_id: &'a str,
    ) -> BoxFuture<'a, Result<IssuedEsim, ProviderError>> {
        Box::pin(async {
            let matching_id = random_id("").to_uppercase();
            Ok(IssuedEsim {
                iccid: format!("8901{}", random_digits(15)),
                activation_code: format!("LPA:1$smdp.sandbox.x402d.dev${matching_id}"),
            })
        })
    }
}

impl VerificationProvider for Sandbox {
    fn start<'a>(
        &'a self,
        _service: &'a str,
    ) -> BoxFuture<'a, Result<StartedVerification, ProviderError>> {
        Box::pin(async {
            Ok(StartedVerification {
                verification_id: random_id("ver_"),
                phone_number: format!("+1555{}", random_digits(7)),
            })
        })
    }
}

/// Twilio's REST API (2010-04-01) for SMS and numbers.
pub struct Twilio {
    config: TwilioConfig,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct TwilioMessage {
    sid: String,
    status: String,
}

#[derive(Deserialize)]
struct TwilioAvailable {
    available_phone_numbers: Vec<TwilioAvailableNumber>,
}

#[derive(Deserialize)]
struct TwilioAvailableNumber {
    phone_number: String,
}

#[derive(Deserialize)]
struct TwilioIncoming {
    sid: String,
    phone_number: String,
}

#[derive(Deserialize)]
struct TwilioErrorBody {
    message: Option<String>,
    code: Option<i64>,
}

impl Twilio {
    pub fn new(config: TwilioConfig) -> Result<Twilio, ProviderError> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(|e| twilio_error(e.to_string()))?;
        Ok(Twilio { config, client })
    }

    pub fn from_number(&self) -> &str {
        &self.config.from_number
    }

    /// The auth token Twilio signs its webhooks with.
    pub fn auth_token(&self) -> &str {
        &self.config.auth_token.0
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/{tail}",
            self.config.api_url.trim_end_matches('/'),
            self.config.account_sid
        )
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let response = request
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token.0))
            .send()
            .await
            .map_err(|e| twilio_error(e.without_url().to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| twilio_error(e.to_string()))?;
        if !status.is_success() {
            let detail = serde_json::from_str::<TwilioErrorBody>(&text)
                .ok()
                .map(|b| {
                    format!(
                        "{} (code {})",
                        b.message.unwrap_or_default(),
                        b.code.unwrap_or(0)
                    )
                })
                .unwrap_or(text);
            return Err(twilio_error(format!("{status}: {detail}")));
        }
        serde_json::from_str(&text).map_err(|e| twilio_error(format!("unreadable answer: {e}")))
    }
}

fn twilio_error(message: String) -> ProviderError {
    ProviderError {
        provider: "twilio",
        message,
    }
}

impl SmsProvider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }
    fn send<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, Result<SentMessage, ProviderError>> {
        Box::pin(async move {
            let request = self.client.post(self.url("Messages.json")).form(&[
                ("To", to),
                ("From", from),
                ("Body", body),
            ]);
            let m: TwilioMessage = self.call(request).await?;
            Ok(SentMessage {
                message_id: m.sid,
                status: m.status,
            })
        })
    }
}

impl NumberProvider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }
    fn buy<'a>(&'a self, country: &'a str) -> BoxFuture<'a, Result<BoughtNumber, ProviderError>> {
        Box::pin(async move {
            let search = self
                .client
                .get(self.url(&format!("AvailablePhoneNumbers/{country}/Local.json")))
                .query(&[("SmsEnabled", "true"), ("PageSize", "1")]);
            let available: TwilioAvailable = self.call(search).await?;
            let candidate = available
                .available_phone_numbers
                .into_iter()
                .next()
                .ok_or_else(|| twilio_error(format!("no numbers available in {country}")))?;
            let buy = self
                .client
                .post(self.url("IncomingPhoneNumbers.json"))
                .form(&[("PhoneNumber", candidate.phone_number.as_str())]);
            let bought: TwilioIncoming = self.call(buy).await?;
            Ok(BoughtNumber {
                phone_number: bought.phone_number,
                provider_id: bought.sid,
            })
        })
    }
    fn release<'a>(&'a self, provider_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let response = self
                .client
                .delete(self.url(&format!("IncomingPhoneNumbers/{provider_id}.json")))
                .basic_auth(&self.config.account_sid, Some(&self.config.auth_token.0))
                .send()
                .await
                .map_err(|e| twilio_error(e.without_url().to_string()))?;
            match response.status() {
                // 404: released before (by us, or in Twilio's console): the outcome wanted.
                s if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => Ok(()),
                s => Err(twilio_error(format!("releasing {provider_id}: {s}"))),
            }
        })
    }
}
