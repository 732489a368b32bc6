//! Cluster mode's shared state in PostgreSQL: which nodes are alive (`cluster_nodes`) and which
//! node consumes which partition queue (`cluster_leases`). Times are the database's, so the
//! nodes' clocks need not agree. Cluster mode runs on PostgreSQL only (the config says so).

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn partitions(rows: Vec<sea_orm::QueryResult>) -> Result<Vec<u32>, DbErr> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let p: i32 = r.try_get("", "partition")?;
        out.push(p as u32);
    }
    out.sort_unstable();
    Ok(out)
}

fn ints(parts: &[u32]) -> Value {
    Value::from(parts.iter().map(|p| *p as i32).collect::<Vec<i32>>())
}

/// Says this node is alive and returns the live nodes (seen within `lease_ms`), sorted.
pub async fn heartbeat(
    db: &impl ConnectionTrait,
    prefix: &str,
    node: &str,
    lease_ms: u64,
) -> Result<Vec<String>, DbErr> {
    db.execute_raw(stmt(
        "INSERT INTO cluster_nodes (queue_prefix, node_id, seen_at) VALUES ($1, $2, now()) \
         ON CONFLICT (queue_prefix, node_id) DO UPDATE SET seen_at = now()",
        vec![prefix.into(), node.into()],
    ))
    .await?;
    let rows = db
        .query_all_raw(stmt(
            "SELECT node_id FROM cluster_nodes WHERE queue_prefix = $1 \
             AND seen_at > now() - make_interval(secs => $2) ORDER BY node_id",
            vec![prefix.into(), (lease_ms as f64 / 1000.0).into()],
        ))
        .await?;
    rows.iter().map(|r| r.try_get("", "node_id")).collect()
}

/// Extends every lease this node holds; returns their partitions.
pub async fn renew(
    db: &impl ConnectionTrait,
    prefix: &str,
    node: &str,
    lease_ms: u64,
) -> Result<Vec<u32>, DbErr> {
    partitions(
        db.query_all_raw(stmt(
            "UPDATE cluster_leases SET expires_at = now() + make_interval(secs => $3) \
             WHERE queue_prefix = $1 AND node_id = $2 RETURNING partition",
            vec![
                prefix.into(),
                node.into(),
                (lease_ms as f64 / 1000.0).into(),
            ],
        ))
        .await?,
    )
}

/// Takes the partitions among `wanted` that nobody holds (or whose holder let the lease
/// expire); returns those now held.
pub async fn claim(
    db: &impl ConnectionTrait,
    prefix: &str,
    node: &str,
    wanted: &[u32],
    lease_ms: u64,
) -> Result<Vec<u32>, DbErr> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    partitions(
        db.query_all_raw(stmt(
            "INSERT INTO cluster_leases (queue_prefix, partition, node_id, expires_at) \
             SELECT $1, p, $2, now() + make_interval(secs => $4) FROM unnest($3::int[]) AS p \
             ON CONFLICT (queue_prefix, partition) DO UPDATE \
             SET node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at \
             WHERE cluster_leases.expires_at < now() OR cluster_leases.node_id = EXCLUDED.node_id \
             RETURNING partition",
            vec![
                prefix.into(),
                node.into(),
                ints(wanted),
                (lease_ms as f64 / 1000.0).into(),
            ],
        ))
        .await?,
    )
}

/// Gives partitions back (after their deliveries are finished), so another node takes them.
pub async fn release(
    db: &impl ConnectionTrait,
    prefix: &str,
    node: &str,
    parts: &[u32],
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "DELETE FROM cluster_leases WHERE queue_prefix = $1 AND node_id = $2 \
         AND partition = ANY($3::int[])",
        vec![prefix.into(), node.into(), ints(parts)],
    ))
    .await
    .map(|_| ())
}

/// A node that stops cleanly leaves: its leases and its heartbeat go at once.
pub async fn leave(db: &impl ConnectionTrait, prefix: &str, node: &str) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "DELETE FROM cluster_leases WHERE queue_prefix = $1 AND node_id = $2",
        vec![prefix.into(), node.into()],
    ))
    .await?;
    db.execute_raw(stmt(
        "DELETE FROM cluster_nodes WHERE queue_prefix = $1 AND node_id = $2",
        vec![prefix.into(), node.into()],
    ))
    .await
    .map(|_| ())
}
