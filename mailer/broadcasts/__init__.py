"""The mail magazine (メルマガ): issues written as folders, sent to an audience through the ledger.

    content.py   an issue's folder read and checked (rendered once for a sample reader)
    issues.py    the issue's life: create, schedule, send, pause, resume, cancel, the tick's part
                 (due issues started, late ones held, the audience written in batches, done ones
                 closed), and what `show` and `list` print
    kind.py      the broadcast kind of mail: what a claimed issue row needs before it may go

Every issue mail goes through the same send path as seminar mail (deliver/pipeline.py): the same
claims, rate limits and SMTP sessions, after every other kind of mail that is due.
"""
