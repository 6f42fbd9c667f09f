"""One remote job, from submission to its end: the Job itself, the loop that follows it, the
wait for a worker, the published worker's live output, and the Python it ran on."""
