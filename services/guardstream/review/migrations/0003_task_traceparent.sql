-- The W3C traceparent of the actions.review record a task came from: the relay sends the
-- task's Review, human Decision and assignment events in that trace. NULL: untraced input.
ALTER TABLE tasks ADD COLUMN traceparent text;
