//! The facts `cutover report` needs beyond the rollouts themselves (docs/report.md): the commit
//! each rollout deployed (`deploy --commit SHA --committed-at T`), and every change of "the
//! service has a ready instance" the host observed, so unplanned downtime can be measured.

use crate::{Store, StoreError};
use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};

/// The commit a rollout deployed, written with the rollout's start (same transaction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitInfo {
    pub rollout_id: i64,
    pub commit: String,
    /// When the commit was made, Unix milliseconds.
    pub committed_at: i64,
}

/// A change of whether the service has a ready instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingRecord {
    pub service: String,
    /// Unix milliseconds.
    pub at: i64,
    pub serving: bool,
    /// cutover stopped the instances on purpose (its graceful shutdown).
    pub planned: bool,
}

/// A rollout with the commit it deployed, if it was given one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRow {
    pub id: i64,
    pub service: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub commit: Option<String>,
    pub committed_at: Option<i64>,
}

pub(crate) fn apply(tx: &Transaction<'_>, commits: &[CommitInfo]) -> Result<(), StoreError> {
    for c in commits {
        tx.execute(
            "INSERT INTO rollout_commits (rollout_id, commit_sha, committed_at) VALUES (?1, ?2, ?3)",
            params![c.rollout_id, c.commit, c.committed_at],
        )?;
    }
    Ok(())
}

impl Store {
    /// Appends one serving change.
    pub fn record_serving(&mut self, r: &ServingRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO serving (service, at, serving, planned) VALUES (?1, ?2, ?3, ?4)",
            params![r.service, r.at, r.serving, r.planned],
        )?;
        Ok(())
    }

    /// Every serving change before `until`, in the order they were recorded.
    pub fn serving_facts(&self, until: i64) -> Result<Vec<ServingRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT service, at, serving, planned FROM serving WHERE at < ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([until], |r| {
            Ok(ServingRecord {
                service: r.get(0)?,
                at: r.get(1)?,
                serving: r.get(2)?,
                planned: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last serving change recorded for `service`, if any.
    pub fn last_serving(&self, service: &str) -> Result<Option<ServingRecord>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row(
                "SELECT service, at, serving, planned FROM serving WHERE service = ?1
                 ORDER BY seq DESC LIMIT 1",
                [service],
                |r| {
                    Ok(ServingRecord {
                        service: r.get(0)?,
                        at: r.get(1)?,
                        serving: r.get(2)?,
                        planned: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every rollout started before `until`, oldest first, with its commit.
    pub fn deploys(&self, until: i64) -> Result<Vec<DeployRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, r.service, r.started_at, r.ended_at, r.outcome, c.commit_sha,
                    c.committed_at
             FROM rollouts r LEFT JOIN rollout_commits c ON c.rollout_id = r.id
             WHERE r.started_at < ?1 ORDER BY r.started_at, r.id",
        )?;
        let rows = stmt.query_map([until], |r| {
            Ok(DeployRow {
                id: r.get(0)?,
                service: r.get(1)?,
                started_at: r.get(2)?,
                ended_at: r.get(3)?,
                outcome: r.get(4)?,
                commit: r.get(5)?,
                committed_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
