"""Reply sinks: agents that turn events into posts on external APIs, effectively once.

- ``github``: ``github.comment.requested.v1`` -> an issue or pull-request comment (agent ``github_comments``);
- ``slack``: ``slack.reply.requested.v1`` -> a Slack message (agent ``slack_replies``);
- ``base``: the HTTP error policy, the rate-limit gate, the lookup-before-repost ledger.

Importing ``streams.sinks.github`` or ``streams.sinks.slack`` declares its agent and resource
(``agents/__init__.py`` does, so ``vigil worker`` runs them).
"""
