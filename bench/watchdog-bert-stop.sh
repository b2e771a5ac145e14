#!/bin/bash
# Issue #10 acceptance by hand: the BERT sample on 4 ranks (2x2), one rank SIGSTOPped mid-training, RANNC_TIMEOUT=20.
# Run from the repository root after dotnet build tests/Rannc.Runtime.Tests -c Release.
S=$PWD/tests/Rannc.Runtime.Tests/bin/Release/net10.0/linux-x64/Rannc.Samples.dll
LOG=/tmp/watchdog-bert.log
RANNC_TIMEOUT=20 timeout 180 mpiexec.hydra -n 4 -prepend-rank dotnet $S --model bert --layers 2 --hidden 32 --seq 8 \
  --batch 8 --steps 100000 --dtype float64 --plan-cache "" --plan 2x2 > $LOG 2>&1 &
JOB=$!
sleep 15 # start-up, profiling and the first steps
VICTIM=$(pgrep -f "dotnet $S" | sort -n | tail -1)
kill -STOP $VICTIM; T0=$(date +%s.%N); echo "stopped pid $VICTIM"
wait $JOB; RC=$?
echo "job exit $RC, $(echo "$(date +%s.%N)-$T0" | bc) s after the stop"
kill -KILL $VICTIM 2>/dev/null
grep "watchdog" $LOG
