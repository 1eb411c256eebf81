"""Head-to-head benchmarks: a resumable matrix runner (``spec``, ``runner``), the published-figures table
(``published``), DD-Ranking's robust scores (``robust``) and the leaderboard page (``leaderboard``)."""
