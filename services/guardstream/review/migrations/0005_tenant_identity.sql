-- Tenant in every identity: two tenants may use the same post_id (and the same text) without
-- meeting. A post's text is keyed by (tenant, post_id), a task is unique per (tenant, post_id,
-- policy) and new task ids hash the tenant in (review/logic.py `task_id`). Existing rows keep
-- their ids: the old keys were unique, so they stay unique under the wider keys, and nothing
-- recomputes an old task's id (a replayed decision meets its task through the unique key).

-- post_id leads both keys: the consumer's batch lookups go by post_id (`= ANY(...)`), then
-- match the tenant; a (tenant, post_id) lookup uses the same index.
ALTER TABLE post_texts DROP CONSTRAINT post_texts_pkey;
ALTER TABLE post_texts ADD PRIMARY KEY (post_id, tenant);

ALTER TABLE tasks DROP CONSTRAINT tasks_post_id_policy_key;
ALTER TABLE tasks ADD CONSTRAINT tasks_post_tenant_policy_key UNIQUE (post_id, tenant, policy);

-- Human verdicts queued for the verdict cache were keyed by content key alone, and the cache
-- applied a reviewer's verdict (and free-text reason) to every tenant's posts with that text.
-- Their outbox key becomes "<tenant>:<content key>" (core/cache.py `human_verdict_key`): the
-- tenant of the task decided at the verdict's own time. A row no task can be found for cannot
-- be given to any tenant, so it is removed rather than restored under a guess.
UPDATE outbox o SET key = t.tenant || ':' || o.key
FROM tasks t
WHERE o.kind = 'human_verdict' AND position(':' IN o.key) = 0
  AND t.content_key = o.key AND t.state = 'decided'
  AND t.decided_at = (convert_from(o.payload, 'UTF8')::jsonb ->> 'decided_at')::timestamptz;
DELETE FROM outbox WHERE kind = 'human_verdict' AND position(':' IN key) = 0;
