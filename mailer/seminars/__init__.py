"""The seminars: their files, the time maths of a step, each reader's cursor, the planner, the checks."""
