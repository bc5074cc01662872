-- The action that sent the post to review (schema 1.1): `review`, or `hold` — kept unpublished
-- until a person decides, so an expired deadline leaves it held instead of downgrading it to
-- safe. The console tells the two apart; tasks created before this column read as `review`.
ALTER TABLE tasks ADD COLUMN action text NOT NULL DEFAULT 'review'
    CHECK (action IN ('review', 'hold'));
