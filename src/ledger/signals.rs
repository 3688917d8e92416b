//! Wake-ups between nodes sharing a PostgreSQL ledger, by LISTEN/NOTIFY: a `/settle` waiting on
//! one node learns at once that another node's transaction settled its payment, and the node
//! holding the lanes learns at once that a payment was queued elsewhere. They travel through the
//! database that holds the truth, so no wake-up depends on a second service being up; a lost one
//! costs only latency (waiters re-read the ledger and batchers look at the queue periodically).

use sqlx::postgres::PgListener;

use super::{Ledger, LedgerError};

const CHANNEL: &str = "x402d_signals";

/// NOTIFY payloads stay under PostgreSQL's 8,000-byte limit.
const PAYLOAD_MAX: usize = 7_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// A payment was queued on this chain.
    Queued(u64),
    /// This payment's state changed.
    Moved(i64),
}

impl Signal {
    fn encode(self) -> String {
        match self {
            Signal::Queued(chain) => format!("q{chain}"),
            Signal::Moved(id) => format!("m{id}"),
        }
    }

    fn decode(word: &str) -> Option<Signal> {
        if let Some(chain) = word.strip_prefix('q') {
            return chain.parse().ok().map(Signal::Queued);
        }
        word.strip_prefix('m')?.parse().ok().map(Signal::Moved)
    }
}

/// A node's subscription to every node's signals.
pub struct Signals(PgListener);

impl Signals {
    /// The next notification: its sender's tag and its signals (unreadable words are skipped).
    pub async fn next(&mut self) -> Result<(String, Vec<Signal>), LedgerError> {
        let n = self.0.recv().await?;
        let (from, words) = n.payload().split_once(';').unwrap_or(("", n.payload()));
        Ok((
            from.to_owned(),
            words.split(',').filter_map(Signal::decode).collect(),
        ))
    }
}

impl Ledger {
    /// Tells every node sharing this ledger, as `from` (a tag its own listener skips); nothing
    /// to do with SQLite (one node).
    pub async fn signal(&self, from: &str, signals: &[Signal]) -> Result<(), LedgerError> {
        if self.sqlite || signals.is_empty() {
            return Ok(());
        }
        let head = format!("{from};");
        let mut payloads = vec![head.clone()];
        for s in signals {
            let word = s.encode();
            let last = payloads
                .last_mut()
                .filter(|p| p.len() + word.len() < PAYLOAD_MAX);
            match last {
                Some(p) => {
                    if p.len() > head.len() {
                        p.push(',');
                    }
                    p.push_str(&word);
                }
                None => payloads.push(format!("{head}{word}")),
            }
        }
        for p in payloads {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(p)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Subscribes to every node's signals; `None` with SQLite.
    pub async fn listen(&self) -> Result<Option<Signals>, LedgerError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Signals(listener)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_and_junk_is_skipped() {
        for s in [Signal::Queued(84532), Signal::Moved(7)] {
            assert_eq!(Signal::decode(&s.encode()), Some(s));
        }
        assert_eq!(Signal::decode("x1"), None);
        assert_eq!(Signal::decode("m"), None);
        assert_eq!(Signal::decode("q-1"), None);
    }
}
