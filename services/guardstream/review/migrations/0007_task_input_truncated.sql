-- Whether the model judged a shortened text (the post was longer than its input window; the
-- scorer kept its head and tail): the console tells the reviewer to read the middle.
ALTER TABLE tasks ADD COLUMN input_truncated boolean NOT NULL DEFAULT false;
