//! A small SQL text builder that numbers parameters for the backend (`?` or `$n`), for the
//! multi-row upserts sea-query's builder cannot express (CASE-max merges, conditional updates).

use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, QueryResult, Statement, Value,
};

/// A `LIKE` pattern that finds `term` anywhere, its `%`, `_` and `\\` taken as themselves (with
/// `ESCAPE '\\'`, [`LIKE_ESCAPE`]): a search for `50%` is not a pattern.
pub fn contains(term: &str) -> String {
    let mut out = String::with_capacity(term.len() + 2);
    out.push('%');
    for ch in term.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// The escape character of [`contains`] patterns.
pub const LIKE_ESCAPE: char = '\\';

pub struct Sql {
    backend: DatabaseBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub fn new(backend: DatabaseBackend, text: &str) -> Self {
        Self {
            backend,
            text: text.to_owned(),
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// A parameter. Text never carries a NUL: PostgreSQL refuses it in `text` (a customer's
    /// `\u0000`, valid JSON, would fail the whole transaction), so it is stored as U+FFFD on
    /// both backends.
    pub fn param(&mut self, value: impl Into<Value>) -> &mut Self {
        let value = match value.into() {
            Value::String(Some(s)) if s.contains('\0') => {
                Value::String(Some(s.replace('\0', "\u{fffd}")))
            }
            v => v,
        };
        self.values.push(value);
        match self.backend {
            DatabaseBackend::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.values.len().to_string());
            }
            _ => self.text.push('?'),
        }
        self
    }

    /// `(p1, p2, …)` for a list of values.
    pub fn tuple<V: Into<Value>>(&mut self, values: impl IntoIterator<Item = V>) -> &mut Self {
        self.text.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.param(v);
        }
        self.text.push(')');
        self
    }

    /// `(…), (…), …`: one parenthesised tuple of parameters per row.
    pub fn values(&mut self, rows: impl IntoIterator<Item = Vec<Value>>) -> &mut Self {
        for (i, row) in rows.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.tuple(row);
        }
        self
    }

    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

/// Rows per multi-row statement: well under both backends' parameter limits.
pub const CHUNK: usize = 1000;

/// Counts one statement of the store's transactions (`wahook_db_statements_total`).
pub fn count_statement() {
    metrics::counter!(crate::metrics::DB_STATEMENTS, "component" => "store").increment(1);
}

/// Runs a statement inside the store's transaction, counted.
pub async fn run(tx: &DatabaseTransaction, sql: Sql) -> Result<(), DbErr> {
    count_statement();
    tx.execute_raw(sql.build()).await.map(|_| ())
}

/// Runs a query inside the store's transaction, counted.
pub async fn query(tx: &DatabaseTransaction, sql: Sql) -> Result<Vec<QueryResult>, DbErr> {
    count_statement();
    tx.query_all_raw(sql.build()).await
}

/// Statements of the store's transaction whose results nobody reads, kept in order and run
/// together: on SQLite as one text, one round trip to the driver's worker thread for them all
/// (sqlx runs a text of several statements in order, binding the parameters across them; a
/// round trip saved is ~45 µs of the one write lock under load, BENCHMARKS.md); on PostgreSQL
/// one by one. A step that reads the database runs what is chained first ([`Chain::flush`]), so
/// the order of the transaction's statements is the order they were written in.
pub struct Chain {
    backend: DatabaseBackend,
    sqls: Vec<Sql>,
}

impl Chain {
    pub fn new(backend: DatabaseBackend) -> Self {
        Self {
            backend,
            sqls: Vec::new(),
        }
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.backend
    }

    /// A statement to run with the next flush.
    pub fn push(&mut self, sql: Sql) {
        self.sqls.push(sql);
    }

    /// Runs what is chained, counted as one statement per round trip.
    pub async fn flush(&mut self, tx: &DatabaseTransaction) -> Result<(), DbErr> {
        let sqls = std::mem::take(&mut self.sqls);
        if sqls.is_empty() {
            return Ok(());
        }
        if self.backend != DatabaseBackend::Sqlite || sqls.len() == 1 {
            for sql in sqls {
                run(tx, sql).await?;
            }
            return Ok(());
        }
        let mut all = Sql::new(self.backend, "");
        for sql in sqls {
            all.text.push_str(&sql.text);
            all.text.push_str(";\n");
            all.values.extend(sql.values);
        }
        run(tx, all).await
    }
}
