#!/bin/sh
# GET /cgi-bin/records: the newest record the workload wrote (the service answers from disk).
printf 'Content-Type: text/plain\r\n\r\n'
tail -n 1 /var/lib/immortal-records/records.log 2>/dev/null || echo none
