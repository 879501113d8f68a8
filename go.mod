module github.com/lbpair/lbpair

go 1.26.0
