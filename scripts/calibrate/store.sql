-- One store transaction of 50 one-message events from 50 of 1,000 contacts, as the store writer
-- issues it: contacts upsert, conversations insert, messages insert, counters, processed marks,
-- each one multi-row statement (the conversations read and the state machine are skipped: the
-- actors know their ids and a text message changes no state).
\set s random(0, 19)
\set n random(1, 2000000000)
BEGIN;
SET LOCAL synchronous_commit = off;
INSERT INTO contacts (workspace_id, phone, user_id, name, lead_status, lead_score,
    last_activity_at, last_contact_at, created_at, updated_at)
SELECT :ws, '49170' || lpad((:s * 50 + g)::text, 7, '0'), NULL, 'Lead ' || g, 'prospect', 50,
    now(), now(), now(), now()
FROM generate_series(1, 50) g
ON CONFLICT (workspace_id, phone) DO UPDATE SET
    user_id = COALESCE(excluded.user_id, contacts.user_id),
    name = COALESCE(excluded.name, contacts.name),
    last_activity_at = GREATEST(contacts.last_activity_at, excluded.last_activity_at),
    last_contact_at = GREATEST(contacts.last_contact_at, excluded.last_contact_at),
    updated_at = excluded.updated_at
RETURNING id, workspace_id, phone;
INSERT INTO conversations (workspace_id, contact_id, status, message_count, created_at, updated_at)
SELECT :ws, c.id, 'open', 0, now(), now() FROM contacts c
WHERE c.workspace_id = :ws AND c.phone BETWEEN '49170' || lpad((:s * 50 + 1)::text, 7, '0')
                                          AND '49170' || lpad((:s * 50 + 50)::text, 7, '0')
ON CONFLICT (contact_id) DO NOTHING RETURNING id, contact_id, status;
INSERT INTO messages (workspace_id, conversation_id, direction, wamid, message_type, content,
    status, status_rank, status_error, timestamp, metadata, event_id, created_at, updated_at)
SELECT :ws, v.id, 'inbound', 'wamid.pgbench.' || :client_id || '.' || :n || '.' || v.id, 'text',
    'Hola, ¿tienen el modelo en stock?', 'received', 0, NULL, now(), '{}', NULL, now(), now()
FROM conversations v JOIN contacts c ON c.id = v.contact_id
WHERE c.workspace_id = :ws AND c.phone BETWEEN '49170' || lpad((:s * 50 + 1)::text, 7, '0')
                                          AND '49170' || lpad((:s * 50 + 50)::text, 7, '0')
ON CONFLICT (workspace_id, wamid) DO UPDATE SET content = excluded.content
    WHERE messages.message_type = 'pending'
RETURNING conversation_id, timestamp, wamid, event_id;
UPDATE conversations SET message_count = message_count + 1,
    last_message_at = GREATEST(last_message_at, now()), updated_at = now()
WHERE contact_id IN (SELECT id FROM contacts WHERE workspace_id = :ws AND phone BETWEEN
    '49170' || lpad((:s * 50 + 1)::text, 7, '0') AND '49170' || lpad((:s * 50 + 50)::text, 7, '0'));
UPDATE webhook_events SET status = 'processed', last_error = NULL, attempts = attempts + 1,
    processed_at = now()
WHERE id IN (SELECT id FROM webhook_events WHERE status = 'pending' LIMIT 50
             FOR UPDATE SKIP LOCKED);
COMMIT;
