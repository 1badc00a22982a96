set terminal pngcairo size 1120,520 font 'sans,10'
set output 'examples/tiny_llm/results/accuracy.png'
set multiplot layout 1,2 title 'tiny\_llm: exact match vs KV-cache compression (same kept tokens for every policy)'
set logscale x 2
set xrange [1.8:9]
set xtics ('2x' 2, '4x' 4, '8x' 8)
set yrange [-2:102]
set ylabel 'exact match (%)'
set xlabel 'compression (LagKV keeps 1/c of each chunk; kept tokens: table.md)'
set grid
set key outside below horizontal maxrows 3
set title '16-digit passkey'
plot '-' using 1:2 with linespoints lw 2 dt 2 pt 0 title 'full cache', '-' using 1:2 with linespoints lw 2 title 'LagKV', '-' using 1:2 with linespoints lw 2 title 'H2O', '-' using 1:2 with linespoints lw 2 title 'L2-norm (global)', '-' using 1:2 with linespoints lw 2 title 'L2-norm (chunked)', '-' using 1:2 with linespoints lw 2 title 'StreamingLLM', '-' using 1:2 with linespoints lw 2 title 'random'
2 99
4 99
8 99
e
2 56
4 1
8 0
e
2 36
4 0
8 0
e
2 0
4 0
8 0
e
2 0
4 0
8 0
e
2 61
4 29
8 12
e
2 31
4 1
8 0
e
set title '64-digit passkey'
plot '-' using 1:2 with linespoints lw 2 dt 2 pt 0 title 'full cache', '-' using 1:2 with linespoints lw 2 title 'LagKV', '-' using 1:2 with linespoints lw 2 title 'H2O', '-' using 1:2 with linespoints lw 2 title 'L2-norm (global)', '-' using 1:2 with linespoints lw 2 title 'L2-norm (chunked)', '-' using 1:2 with linespoints lw 2 title 'StreamingLLM', '-' using 1:2 with linespoints lw 2 title 'random'
2 89
4 89
8 89
e
2 0
4 0
8 0
e
2 0
4 0
8 0
e
2 0
4 0
8 0
e
2 0
4 0
8 0
e
2 57
4 19
8 5
e
2 0
4 0
8 0
e
unset multiplot
