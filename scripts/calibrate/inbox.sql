-- One inbox group commit of 30 webhooks, as the inbox writer issues it (one statement, its own
-- transaction, ON CONFLICT on the dedup key, RETURNING id and key), with payload-sized text.
\set n random(1, 2000000000)
INSERT INTO webhook_events (workspace_id, account_id, source, event_type, dedup_key, payload,
    headers, received_at, status, attempts, last_error, correlation_id)
SELECT :ws, :acct, 'meta', NULL, 'pgbench:' || :client_id || ':' || :n || ':' || g,
    repeat('{"object":"whatsapp_business_account","entry":[]}', 14), '{}', now(), 'pending', 0,
    NULL, 'pgbench-' || g
FROM generate_series(1, 30) g
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, dedup_key;
