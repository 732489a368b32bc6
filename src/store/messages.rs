//! `messages`: reads by wamid for processing (the batched writes are in `batch.rs`).

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbErr};

use super::sql::Sql;

/// The contact key (`contacts.phone`) of the conversation each stored `(workspace, wamid)`
/// belongs to; wamids not stored are absent.
pub async fn contacts_of(
    db: &impl ConnectionTrait,
    wamids: &[(i64, String)],
) -> Result<HashMap<(i64, String), String>, DbErr> {
    let mut out = HashMap::new();
    for chunk in wamids.chunks(500) {
        let mut sql = Sql::new(
            db.get_database_backend(),
            "SELECT m.workspace_id AS ws, m.wamid AS wamid, c.phone AS phone FROM messages m \
             JOIN conversations v ON v.id = m.conversation_id \
             JOIN contacts c ON c.id = v.contact_id WHERE (m.workspace_id, m.wamid) IN (",
        );
        sql.values(
            chunk
                .iter()
                .map(|(ws, w)| vec![(*ws).into(), w.clone().into()]),
        );
        sql.push(")");
        for r in db.query_all_raw(sql.build()).await? {
            out.insert(
                (r.try_get("", "ws")?, r.try_get("", "wamid")?),
                r.try_get("", "phone")?,
            );
        }
    }
    Ok(out)
}
