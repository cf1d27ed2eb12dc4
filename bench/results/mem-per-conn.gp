set terminal pngcairo size 800,500 noenhanced
set output '/work/main/bench/results/mem-per-conn.png'
set title 'Proxy RSS growth per idle proxied connection (median of 5)'
set xlabel 'idle connections'
set ylabel 'RSS KB per connection'
set grid
set key inside top right box opaque
set offsets graph 0.05, graph 0.05, graph 0.3, 0
set yrange [0:*]
set xtics (1000, 5000, 9000)
plot '/work/main/bench/results/mem-per-conn.dat' using 1:2 with linespoints lw 2 pt 7 ps 1.5 title 'stickyd', \
     '/work/main/bench/results/mem-per-conn.dat' using 1:3 with linespoints lw 2 pt 7 ps 1.5 title 'haproxy', \
     '/work/main/bench/results/mem-per-conn.dat' using 1:4 with linespoints lw 2 pt 7 ps 1.5 title 'nginx'
