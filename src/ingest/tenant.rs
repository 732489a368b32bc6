//! Who signed an event. The intake stores it with the event; processing applies the event only
//! inside it, whatever the payload names: a body verified by one tenant's secret can never act
//! in another tenant's workspace, on every path (live, recovery, DLQ re-drive, replay, broker).

/// The tenant whose secret verified a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenant {
    /// These accounts' shared secret (Meta's app secret or an account's Kapso secret) verified
    /// it: it may act on these accounts' numbers only. `workspace_id` is theirs when they
    /// are all in one workspace.
    Accounts {
        workspace_id: Option<i64>,
        account_ids: Vec<i64>,
    },
    /// A Kapso project's secret verified it: it may act on the numbers of this workspace.
    Workspace(i64),
}

/// How the tenant of an event stands to a `phone_number_id` the payload names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Inside the tenant: applied in this workspace.
    In(i64),
    /// No account has this number: skipped with a note.
    Unknown,
    /// Another tenant's number: never applied; the event is parked with the reason.
    Foreign,
}

impl Tenant {
    /// A tenant that admits nothing (an event kept for the record only).
    pub fn nobody() -> Self {
        Tenant::Accounts {
            workspace_id: None,
            account_ids: Vec::new(),
        }
    }

    /// The workspace the event is listed under, if it is one.
    pub fn workspace_id(&self) -> Option<i64> {
        match self {
            Tenant::Accounts { workspace_id, .. } => *workspace_id,
            Tenant::Workspace(w) => Some(*w),
        }
    }

    /// The one account that verified the event, if it was one.
    pub fn account_id(&self) -> Option<i64> {
        match self {
            Tenant::Accounts { account_ids, .. } if account_ids.len() == 1 => Some(account_ids[0]),
            _ => None,
        }
    }

    /// Whether an account (by id and workspace) is inside this tenant.
    pub fn admits(&self, account_id: i64, workspace_id: i64) -> bool {
        match self {
            Tenant::Accounts { account_ids, .. } => account_ids.contains(&account_id),
            Tenant::Workspace(w) => *w == workspace_id,
        }
    }

    /// The prefix that keeps one tenant's dedup keys apart from another's.
    pub fn key(&self) -> String {
        match self {
            Tenant::Workspace(w)
            | Tenant::Accounts {
                workspace_id: Some(w),
                ..
            } => format!("w{w}"),
            Tenant::Accounts { account_ids, .. } => match account_ids.iter().min() {
                Some(a) => format!("a{a}"),
                None => "none".into(),
            },
        }
    }

    /// As stored in `webhook_events.signed_by`: `accounts:<ws|->:<id,id>` or `workspace:<ws>`.
    pub fn encode(&self) -> String {
        match self {
            Tenant::Workspace(w) => format!("workspace:{w}"),
            Tenant::Accounts {
                workspace_id,
                account_ids,
            } => {
                let ids: Vec<String> = account_ids.iter().map(i64::to_string).collect();
                let ws = workspace_id.map_or_else(|| "-".to_owned(), |w| w.to_string());
                format!("accounts:{ws}:{}", ids.join(","))
            }
        }
    }

    /// From its stored form. Events stored before the column existed (`None`) are confined to
    /// the account or workspace they were listed under; anything unreadable admits nothing.
    pub fn decode(
        stored: Option<&str>,
        workspace_id: Option<i64>,
        account_id: Option<i64>,
    ) -> Self {
        let Some(stored) = stored else {
            return match (account_id, workspace_id) {
                (Some(a), ws) => Tenant::Accounts {
                    workspace_id: ws,
                    account_ids: vec![a],
                },
                (None, Some(w)) => Tenant::Workspace(w),
                (None, None) => Tenant::nobody(),
            };
        };
        let parsed = || -> Option<Tenant> {
            if let Some(w) = stored.strip_prefix("workspace:") {
                return Some(Tenant::Workspace(w.parse().ok()?));
            }
            let rest = stored.strip_prefix("accounts:")?;
            let (ws, ids) = rest.split_once(':')?;
            let workspace_id = match ws {
                "-" => None,
                w => Some(w.parse().ok()?),
            };
            let account_ids = ids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::parse)
                .collect::<Result<Vec<i64>, _>>()
                .ok()?;
            Some(Tenant::Accounts {
                workspace_id,
                account_ids,
            })
        };
        parsed().unwrap_or_else(Tenant::nobody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_survives_its_stored_form() {
        for t in [
            Tenant::Workspace(7),
            Tenant::Accounts {
                workspace_id: Some(3),
                account_ids: vec![1, 2],
            },
            Tenant::Accounts {
                workspace_id: None,
                account_ids: vec![4, 9],
            },
            Tenant::nobody(),
        ] {
            assert_eq!(Tenant::decode(Some(&t.encode()), None, None), t);
        }
        assert_eq!(
            Tenant::decode(Some("garbage"), Some(1), None),
            Tenant::nobody()
        );
        assert_eq!(Tenant::decode(None, Some(5), None), Tenant::Workspace(5));
        assert!(Tenant::Workspace(5).admits(99, 5));
        assert!(!Tenant::Workspace(5).admits(99, 6));
        let accounts = Tenant::Accounts {
            workspace_id: Some(5),
            account_ids: vec![1],
        };
        assert!(accounts.admits(1, 5));
        assert!(
            !accounts.admits(2, 5),
            "another account of the same workspace"
        );
    }
}
